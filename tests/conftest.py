import os

import pytest
import torch

# Two cores here and on CI: keep every test single-threaded (oversubscription is ~30x slower).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
