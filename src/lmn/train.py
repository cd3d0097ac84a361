"""The trainer's former single module, kept so that ``from lmn.train import ...`` still
works; the code lives in :mod:`lmn.trainer` (one module per part of a run)."""

from .trainer import *  # noqa: F401,F403
from .trainer import __all__  # noqa: F401
