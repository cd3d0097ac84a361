"""The memory as components: read rules are registered objects asked, never names compared;
the pinned memory is its own module; a new read rule is one class and one registration."""

import re
from pathlib import Path

import pytest
import torch

from lmn import LMN, LMNConfig, reference_forward
from lmn.tree import DigitsRule, LatestRule, ReadRule, read_rule, read_rule_names, register_read_rule

SRC = Path(__file__).resolve().parents[2] / "src" / "lmn"

# a comparison with a rule's name, or of the config's read field with anything
_BRANCH = re.compile(r"""(==|!=)\s*["'](latest|digits)["']|["'](latest|digits)["']\s*(==|!=)|\.read\s*(==|!=|in\b)""")


def _branches(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if _BRANCH.search(line.split("#")[0])]


def test_the_branch_finder_finds_branches():
    assert _branches('if tree.read == "latest":\n    pass') == ['if tree.read == "latest":']
    assert _branches('x = cfg.read in ("a",)\nlatest = "digits" != r') == ['x = cfg.read in ("a",)', 'latest = "digits" != r']
    assert _branches('read: str = "latest"  # the default\nkeep = rule.keeps_merged') == []


def test_no_module_but_the_tree_branches_on_the_read_rule():
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "tree.py" and path.parent == SRC:
            continue
        hits = _branches(path.read_text())
        if hits:
            found[str(path.relative_to(SRC))] = hits
    assert found == {}, f"ask the read rule (lmn.tree.ReadRule) instead of comparing its name: {found}"


def test_the_c_kernel_knows_the_rules_by_their_codes():
    from lmn.native import KERNEL_RULES

    assert "dims[D_DIGITS]" in (SRC / "kernels" / "lmn_step.c").read_text()  # the flag lmn.native hands over
    assert {code: read_rule(name).code for code, name in KERNEL_RULES.items()} == {c: c for c in KERNEL_RULES}


def test_built_in_rules_are_registered_with_distinct_codes():
    assert read_rule_names()[:2] == ("latest", "digits")
    assert isinstance(read_rule("latest"), LatestRule) and isinstance(read_rule("digits"), DigitsRule)
    assert read_rule("latest").code == 0 and read_rule("digits").code == 1  # saved states know them by these
    with pytest.raises(ValueError, match=r"read must be one of \('latest', 'digits'"):
        read_rule("fenwick")
    with pytest.raises(ValueError, match="registered already"):
        register_read_rule(LatestRule())
    with pytest.raises(TypeError, match="named ReadRule"):
        register_read_rule(object())


class _MirrorDigits(DigitsRule):
    """A rule of the test's own: the digits rule under another name and no kernel code."""

    name, code = "test-mirror-digits", -1


def _mirror() -> ReadRule:
    try:
        return read_rule(_MirrorDigits.name)
    except ValueError:
        return register_read_rule(_MirrorDigits())


@pytest.mark.parametrize("stride", [2, 3])
def test_a_registered_rule_runs_in_every_pytorch_form(stride):
    """One class + one registration: the config accepts the name and the parallel form, the
    chunked prefill and the streaming step all equal the reference (which asks the rule's
    plain definition); the C kernel, which knows the built-in codes only, refuses it."""
    _mirror()
    torch.manual_seed(0)
    model = LMN(LMNConfig(vocab_size=13, d_model=16, n_heads=2, n_layers=2, stride=stride,
                          read=_MirrorDigits.name)).eval()
    idx = torch.randint(0, 13, (2, 29))
    with torch.no_grad():
        ref = reference_forward(model, idx)
        assert (model(idx) - ref).abs().max() < 1e-5
        last, state = model.prefill(idx[:, :17], max_chunk=4)
        assert (last - ref[:, 16]).abs().max() < 1e-5
        for t in range(17, 29):
            logits, state = model.step(idx[:, t], state)
            assert (logits - ref[:, t]).abs().max() < 1e-5
    from lmn.native import NativeStepper

    with pytest.raises(ValueError, match="kernel knows the read rules"):
        NativeStepper(model)


def test_the_pinned_memory_is_a_component_of_the_block():
    model = LMN(LMNConfig(vocab_size=11, d_model=16, n_heads=2, n_layers=1, pinned=3))
    block = model.blocks[0]
    assert block.pinned is not None and block.pinned.m == 3
    assert not hasattr(block.memory, "write")  # the tree memory knows nothing of it
    assert LMN(LMNConfig(vocab_size=11, d_model=16, n_heads=2, n_layers=1)).blocks[0].pinned is None


def test_weights_saved_with_the_old_pinned_key_still_load():
    torch.manual_seed(1)
    model = LMN(LMNConfig(vocab_size=11, d_model=16, n_heads=2, n_layers=2, pinned=2))
    old = {k.replace(".pinned.write.", ".memory.write."): v.clone() for k, v in model.state_dict().items()}
    assert any(".memory.write." in k for k in old)
    fresh = LMN(LMNConfig(vocab_size=11, d_model=16, n_heads=2, n_layers=2, pinned=2))
    fresh.load_state_dict(old)
    idx = torch.randint(0, 11, (1, 9))
    assert torch.equal(fresh(idx), model(idx))
