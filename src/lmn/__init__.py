"""lmn -- Logarithmic Memory Networks in PyTorch (Taha, arXiv 2501.07905).

    >>> import torch
    >>> from lmn import LMN, LMNConfig
    >>> model = LMN(LMNConfig())            # the paper's 71,489-parameter model
    >>> logits = model(torch.zeros(1, 8, dtype=torch.long))   # parallel form
    >>> state = model.init_state(1)
    >>> step_logits, state = model.step(torch.zeros(1, dtype=torch.long), state)
"""

from .config import LMNConfig
from .model import LMN
from .reference import reference_forward
from .state import LMNState, state_nbytes

__all__ = ["LMN", "LMNConfig", "LMNState", "reference_forward", "state_nbytes"]
__version__ = "0.1.0"
