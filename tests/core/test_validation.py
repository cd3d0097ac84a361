"""lmn.validation: the one integer-range and choice check every config uses."""

import pytest

from lmn.validation import check_choice, check_int


def test_check_int_returns_the_value_in_range():
    assert check_int("n", 3, min=1) == 3
    assert check_int("n", 1, min=1, max=1) == 1
    assert check_int("n", -5) == -5
    assert check_int("n", 7, max=7) == 7


@pytest.mark.parametrize("value", [True, False])
def test_check_int_refuses_bools(value):
    with pytest.raises(ValueError, match=r"^flag must be an integer >= 0, got " + repr(value) + "$"):
        check_int("flag", value, min=0)


@pytest.mark.parametrize("value", [1.0, "2", None, 2.5])
def test_check_int_refuses_non_integers(value):
    with pytest.raises(ValueError, match="must be an integer"):
        check_int("n", value, min=1)


def test_check_int_range_messages():
    with pytest.raises(ValueError, match=r"^LMNConfig\.d_model must be an integer >= 1, got 0$"):
        check_int("LMNConfig.d_model", 0, min=1)
    with pytest.raises(ValueError, match=r"^levels must be an integer in \[1, 61\], got 62$"):
        check_int("levels", 62, min=1, max=61)
    with pytest.raises(ValueError, match=r"^levels must be an integer in \[1, 61\], got 0$"):
        check_int("levels", 0, min=1, max=61)
    with pytest.raises(ValueError, match=r"^k must be an integer <= 3, got 4$"):
        check_int("k", 4, max=3)
    with pytest.raises(ValueError, match=r"^k must be an integer, got 'x'$"):
        check_int("k", "x")


def test_check_int_none_handling():
    assert check_int("top_k", None, min=1, allow_none=True) is None
    assert check_int("top_k", 2, min=1, allow_none=True) == 2
    with pytest.raises(ValueError, match=r"^top_k must be None or an integer >= 1, got 0$"):
        check_int("top_k", 0, min=1, allow_none=True)
    with pytest.raises(ValueError, match=r"^top_k must be None or an integer >= 1, got True$"):
        check_int("top_k", True, min=1, allow_none=True)
    with pytest.raises(ValueError, match=r"^top_k must be an integer >= 1, got None$"):
        check_int("top_k", None, min=1)


def test_check_choice():
    assert check_choice("read", "latest", ["latest", "all"]) == "latest"
    with pytest.raises(ValueError, match=r"^read must be one of \('latest', 'all'\), got 'x'$"):
        check_choice("read", "x", ["latest", "all"])


def test_summarizers_registered_in_one_place(monkeypatch):
    """LMNConfig accepts exactly the summarizers registered in lmn.summarizers."""
    from torch import nn

    from lmn import LMNConfig
    from lmn import summarizers

    assert summarizers.summarizer_names() == ("linear", "conv", "dwsep", "residual", "gated")
    with pytest.raises(ValueError, match=r"LMNConfig\.summarizer must be one of \('linear', 'conv', 'dwsep', 'residual', 'gated'\)"):
        LMNConfig(summarizer="mean")

    class Mean(nn.Module):
        def __init__(self, d_model, n_banks, stride):
            super().__init__()

        def forward(self, children):
            return children.mean(-2)

    monkeypatch.setattr(summarizers, "SUMMARIZER_CLASSES", dict(summarizers.SUMMARIZER_CLASSES))
    summarizers.register_summarizer("mean", Mean)
    cfg = LMNConfig(summarizer="mean")
    assert isinstance(summarizers.build_summarizer(cfg), Mean)
    with pytest.raises(ValueError, match="registered already"):
        summarizers.register_summarizer("mean", Mean)
    with pytest.raises(TypeError):
        summarizers.register_summarizer("bad", object)
