"""The one place argument checks are written: an integer in a range, a name among choices.

Every configuration record and public entry point checks its integers through
:func:`check_int`, so the rule (``bool`` is not an integer here, whatever Python says) and the
wording of the message are the same everywhere::

    check_int("LMNConfig.d_model", 0, min=1)
    # ValueError: LMNConfig.d_model must be an integer >= 1, got 0

This module imports nothing from the package, so any module may use it.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_LAYERS = 10_000  # a hard bound on any model's depth: deeper is no model anyone trains (and slow even to count)


def _range_text(min: int | None, max: int | None) -> str:
    if min is not None and max is not None:
        return f"in [{min}, {max}]"
    if min is not None:
        return f">= {min}"
    if max is not None:
        return f"<= {max}"
    return ""


def check_int(name: str, value, *, min: int | None = None, max: int | None = None,
              allow_none: bool = False) -> int | None:
    """Return ``value`` if it is an ``int`` (not a ``bool``) with ``min <= value <= max``
    (either bound may be ``None``), or ``None`` when ``allow_none``; else raise
    ``ValueError("<name> must be [None or ]an integer >= min / in [min, max] / <= max, got <value!r>")``."""
    if allow_none and value is None:
        return None
    ok = (isinstance(value, int) and not isinstance(value, bool)
          and (min is None or value >= min) and (max is None or value <= max))
    if not ok:
        what = " ".join(filter(None, ("None or an integer" if allow_none else "an integer", _range_text(min, max))))
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def check_choice(name: str, value, choices: Iterable):
    """Return ``value`` if it is one of ``choices``; else raise
    ``ValueError("<name> must be one of <choices as a tuple>, got <value!r>")``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value
