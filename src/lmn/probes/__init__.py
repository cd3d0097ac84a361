"""``lmn probe TASK``: recall probes on the synthetic tasks (:mod:`lmn.probes.run`). The
probes of trained runs (context use, attention mass per tree level) are studies in
``research/`` (not installed)."""
