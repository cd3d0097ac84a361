# The same per-test settings as tests/ (one thread, seed 0 before every test).
from tests.conftest import _seed  # noqa: F401
