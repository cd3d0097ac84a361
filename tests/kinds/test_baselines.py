"""The baselines: the GPT-2 of Table 1 has exactly 69,344 parameters and no dropout."""

import subprocess
import sys
import warnings

import pytest
import torch

pytest.importorskip("transformers")

from lmn.baselines import get_baseline  # noqa: E402


def test_gpt2_matches_table1_size_and_protocol():
    model_cls, config_cls = get_baseline("gpt2")
    model = model_cls(config_cls(vocab_size=65))
    assert model.num_parameters() == 69_344  # tied head; the paper's hand-written GPT: 71,105
    hf = model.hf.config
    assert (hf.resid_pdrop, hf.embd_pdrop, hf.attn_pdrop) == (0.0, 0.0, 0.0)
    assert not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    assert hf._attn_implementation == "sdpa"
    assert model.hf.lm_head.weight is model.hf.transformer.wte.weight


def test_gpt2_forward_contract():
    model_cls, config_cls = get_baseline("gpt2")
    model = model_cls(config_cls(vocab_size=11, n_positions=16))
    assert model(torch.randint(11, (2, 16))).shape == (2, 16, 11)
    with pytest.raises(ValueError, match="exceeds"):
        model(torch.randint(11, (1, 17)))
    with pytest.raises(ValueError, match="outside"):
        model(torch.full((1, 4), 11))


def test_mamba_is_sized_like_the_paper_models():
    model_cls, config_cls = get_baseline("mamba")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "mambapy is not installed" is not under test
        model = model_cls(config_cls(vocab_size=65))
        small = model_cls(config_cls(vocab_size=7, hidden_size=8, num_hidden_layers=1))
    assert model.num_parameters() == 71_016  # LMN 71,489; GPT-2 69,344
    assert small(torch.randint(7, (2, 5))).shape == (2, 5, 7)


def test_import_lmn_does_not_import_transformers():
    code = "import sys, lmn, lmn.data, lmn.baselines, lmn.cli; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
