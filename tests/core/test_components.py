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


# ----------------------------------------------------------------------------- a mechanism of the test's own
from dataclasses import dataclass  # noqa: E402

import torch.nn.functional as F  # noqa: E402

from lmn.mechanisms import ExtraSlots, Mechanism, PieceRead, Slots, mechanism_names, register_mechanism  # noqa: E402


@dataclass
class _PrevState:
    x: torch.Tensor  # (B, n, d), n = min(pos, 1): the previous token
    q: torch.Tensor  # (B, H, n, dh)
    v: torch.Tensor


class _PreviousToken(Mechanism):
    """Position t also reads token t - 1, with score bias ``b`` (a learned scalar)."""

    name, state_class, active = "test-previous", _PrevState, False

    def __init__(self, config):
        super().__init__()
        self.d, self.H = config.d_model, config.n_heads
        self.b = torch.nn.Parameter(torch.tensor(0.3))

    @classmethod
    def enabled(cls, config):
        return cls.active

    @classmethod
    def build(cls, config):
        return cls(config)

    @classmethod
    def state_nbytes(cls, config, batch_size, pos, element_size):
        return config.n_layers * batch_size * min(pos, 1) * 3 * config.d_model * element_size

    def empty(self, batch_size, device, dtype):
        z = torch.zeros(batch_size, self.H, 0, self.d // self.H, device=device, dtype=dtype)
        return _PrevState(torch.zeros(batch_size, 0, self.d, device=device, dtype=dtype), z, z.clone())

    def read_piece(self, x, state, pos, project, return_state):
        B, C, _ = x.shape
        prev = x[:, :-1] if state is None or state.x.shape[1] == 0 else torch.cat([state.x, x[:, :-1]], 1)
        q, v = project(prev)  # (B, H, n, dh): the token before each position that has one
        pad = C - prev.shape[1]
        q, v = F.pad(q, (0, 0, pad, 0)), F.pad(v, (0, 0, pad, 0))  # (B, H, C, dh)
        bias = self.b.expand(B, 1, C).clone()
        bias[..., :pad] = float("-inf")
        slots = ExtraSlots(q.permute(0, 1, 3, 2)[:, :, None], v.permute(0, 1, 3, 2)[:, :, None], bias)
        last = Slots(q[:, :, -1:], v[:, :, -1:], self.b.expand(B, 1)) if state is not None else None
        after = None
        if return_state:
            qa, va = project(x[:, -1:])
            after = _PrevState(x[:, -1:], qa, va)
        return PieceRead(slots, last, after)

    def read_one(self, x, state, pos, project):
        B = x.shape[0]
        qa, va = project(x[:, None])
        return Slots(state.q, state.v, self.b.expand(B, state.q.shape[2])), _PrevState(x[:, None], qa, va)

    def reference_slots(self, x, t):
        B = x.shape[0]
        if t == 0:
            return x.new_zeros(B, 0, x.shape[2]), x.new_zeros(B, 0)
        return x[:, t - 1 : t], self.b.expand(B, 1)

    def reference_state(self, x, T, project):
        q, v = project(x[:, T - 1 : T])
        return _PrevState(x[:, T - 1 : T], q, v)


if _PreviousToken.name not in mechanism_names():
    register_mechanism(_PreviousToken)


@pytest.fixture
def previous_token_on():
    _PreviousToken.active = True
    try:
        yield
    finally:
        _PreviousToken.active = False


@pytest.mark.parametrize("kw", [{}, {"pinned": 2}, {"stride": 3, "read": "digits"}])
def test_a_registered_mechanism_runs_in_every_pytorch_form(previous_token_on, kw):
    """One Mechanism subclass + one registration: the block builds it, the reference reads its
    plain definition, and the parallel form (gradients too), prefill in pieces, the streaming
    step, the state (saved and loaded) and its size agree; the fixed-layout forms refuse it."""
    torch.manual_seed(0)
    cfg = LMNConfig(vocab_size=13, d_model=16, n_heads=2, n_layers=2, **kw)
    model = LMN(cfg)
    assert isinstance(getattr(model.blocks[0], _PreviousToken.name), _PreviousToken)
    idx = torch.randint(0, 13, (2, 23))
    ref, ref_state = reference_forward(model, idx, return_state=True)
    out = model(idx)
    assert (out - ref).abs().max() < 1e-5
    (g_ref,) = torch.autograd.grad(ref.square().sum(), [model.blocks[1].get_parameter(f"{_PreviousToken.name}.b")])
    (g_par,) = torch.autograd.grad(model(idx).square().sum(), [model.blocks[1].get_parameter(f"{_PreviousToken.name}.b")])
    assert (g_ref - g_par).abs() < 1e-4 * max(1.0, g_ref.abs().item())
    with torch.no_grad():
        last, state = model.prefill(idx[:, :13], max_chunk=4)
        assert (last - ref[:, 12]).abs().max() < 1e-5
        for t in range(13, 23):
            logits, state = model.step(idx[:, t], state)
            assert (logits - ref[:, t]).abs().max() < 1e-5
    mine, theirs = state.tensors(), ref_state.tensors()
    assert sorted(mine) == sorted(theirs) and any(k.split(".")[2] == _PreviousToken.name for k in mine)
    for k in mine:
        if not k.endswith("pinned.j"):  # (pinned order among equal scores may differ by rounding)
            assert (mine[k].double() - theirs[k].double()).abs().max() < 1e-5, k
    from lmn import LMNState, state_nbytes

    assert state.nbytes == state_nbytes(cfg, 2, 23)
    again = LMNState.from_state_dict(cfg, state.state_dict())
    assert sorted(again.tensors()) == sorted(mine)
    from lmn.native import NativeStepper

    with pytest.raises(ValueError, match="NativeStepper does not run the (test-previous|pinned) memory"):
        NativeStepper(model)
