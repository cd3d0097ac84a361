"""Packed rows for the peers (issue 22, item 3): each document's logits (1e-5) and
gradients (1e-5 of the largest entry) equal those of the document run alone. GPT-2 uses its own mechanism (a block-diagonal
causal attention mask and positions restarting at each document); transformers' Mamba-2
takes no sequence index on its PyTorch path, so it and the other recurrent peers run each
document alone (:func:`lmn.documents.run_documents`). A kind whose forward takes no
``doc_starts`` is refused by name when a batch holds documents."""

import pytest
import torch

from lmn.documents import doc_starts_from_lengths
from lmn.kinds import get_kind

pytest.importorskip("transformers")

TOL = 1e-5
LAYOUTS = [[8, 8, 16, 5], [5, 8, 16, 7, 1], [37], [1, 12, 3, 13, 7, 1]]  # T = 37, at and off powers of two
PEERS = ["gpt2", "mamba", "mamba2", "rwkv", "s4d", "loglinear-mamba2"]


def tiny(name):
    kind = get_kind(name)
    torch.manual_seed(0)
    model = kind.build(kind.size_config("tiny")).eval()
    with torch.no_grad():  # some peers start with zero (no-op) parameters: make every one matter
        for p in model.parameters():
            if p.abs().max() == 0:
                p.normal_(0.0, 0.3)
    return model


def alone(model, idx):
    rows = []
    for r, lengths in enumerate(LAYOUTS):
        at, parts = 0, []
        for n in lengths:
            parts.append(model(idx[r : r + 1, at : at + n]))
            at += n
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows, dim=0)


def close(name, got, want, tol=TOL, relative=False):
    """Max |got - want| <= tol; ``relative``: tol times the largest |want| (a gradient summed
    over every position: entries near 100 here, so float32 leaves ~1e-5 absolute)."""
    assert got.shape == want.shape, f"{name}: {tuple(got.shape)} != {tuple(want.shape)}"
    diff = (got.double() - want.double()).abs().max().item()
    bound = tol * max(1.0, want.abs().max().item()) if relative else tol
    assert diff <= bound, f"{name}: max |diff| {diff:.2e} > {bound:.1e}"


@pytest.mark.parametrize("name", PEERS)
def test_a_packed_row_equals_its_documents_alone(name):
    model = tiny(name)
    starts = doc_starts_from_lengths(LAYOUTS)
    idx = torch.randint(0, model.config.vocab_size, starts.shape, generator=torch.Generator().manual_seed(1))
    weights = torch.randn(*idx.shape, model.config.vocab_size)

    def run(logits_of):
        model.zero_grad()
        logits = logits_of()
        (logits * weights).sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    want, want_grads = run(lambda: alone(model, idx))
    got, got_grads = run(lambda: model(idx, doc_starts=starts))
    close("logits", got, want)
    assert got_grads.keys() == want_grads.keys()
    for n in want_grads:
        close(f"grad {n}", got_grads[n], want_grads[n], relative=True)
    with torch.no_grad():  # the boundaries matter: without them row 0 reads across its first one
        assert (model(idx)[0, 8:] - want[0, 8:]).abs().max() > 1e-4


def test_gpt2_masks_its_attention_in_one_pass(monkeypatch):
    import lmn.baselines._common as common

    def per_document(*args, **kwargs):
        raise AssertionError("GPT-2 ran the documents one by one")

    monkeypatch.setattr(common, "run_documents", per_document)
    model = tiny("gpt2")
    starts = doc_starts_from_lengths(LAYOUTS)
    idx = torch.randint(0, model.config.vocab_size, starts.shape)
    with torch.no_grad():
        close("gpt2", model(idx, doc_starts=starts), alone(model, idx))


def test_a_kind_without_resets_is_refused_by_name():
    from lmn.tasks import Batch
    from lmn.trainer.evaluation import model_outputs

    kind = get_kind("dlinear")
    model = kind.build(kind.size_config("paper") if "paper" in kind.sizes else {})
    x = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=f"{type(model).__name__} cannot reset at document boundaries"):
        model_outputs(model, Batch(x, x, None, doc_starts_from_lengths([[3, 5], [8]])))
