"""One-off studies of lmn, run from a clone's root (``python -m research.STUDY ...``); not
part of the installed package. ``research/README.md`` says what each is and which result
pages it wrote."""
