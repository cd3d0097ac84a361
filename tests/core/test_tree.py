"""The tree module (lmn.tree): plain definitions vs fast helpers, the read rules' coverage,
the base-k counter and the state-size formula at powers of k."""

import pytest
import torch

from lmn import LMN, LMNConfig, state_nbytes
from lmn.tree import (
    Counter,
    Tree,
    carry_height,
    ceil_log,
    digits,
    kept,
    largest_aligned_power,
    n_levels,
    piece_lengths,
    read_counts,
    read_nodes,
)

STRIDES = [2, 3, 4, 5, 8]


def _tokens_of(level: int, j: int, k: int) -> range:
    return range(j * k**level, (j + 1) * k**level)


@pytest.mark.parametrize("k", STRIDES)
def test_counting_helpers_match_their_definitions(k):
    for n in range(1, 700):
        assert sum(dig * k**i for i, dig in enumerate(digits(n, k))) == n
        assert n_levels(n, k) == max(i for i in range(40) if k**i <= n)
        h = carry_height(n, k)
        assert n % k**h == 0 and n % k ** (h + 1) != 0
        p = largest_aligned_power(n, k)
        assert n % p == 0 and n % (p * k) != 0 and p == k**h
        c = ceil_log(n, k)
        assert k**c >= n and (c == 0 or k ** (c - 1) < n)


@pytest.mark.parametrize("k", STRIDES)
def test_latest_reads_the_latest_completed_node_of_every_level(k):
    for t in range(400):
        u = t + 1
        got = read_nodes(t, k, "latest")
        assert [i for i, _ in got] == list(range(1, n_levels(u, k) + 1))
        for i, j in got:
            assert _tokens_of(i, j, k)[-1] <= t  # completed ...
            assert _tokens_of(i, j + 1, k)[-1] > t  # ... and the latest such


@pytest.mark.parametrize("k", STRIDES)
def test_digits_covers_every_earlier_token_exactly_once(k):
    for t in range(400):
        got = read_nodes(t, k, "digits")
        covered = sorted(tok for i, j in got for tok in _tokens_of(i, j, k))
        assert len(set(covered)) == len(covered), (t, got)  # disjoint
        assert [tok for tok in covered if tok != t] == list(range(t)), (t, got)  # every earlier token
        assert (t in covered) == ((t + 1) % k == 0)  # t itself only inside the node it completes
        assert len(got) <= (k - 1) * n_levels(t + 1, k) + k - 2


def test_read_rules_for_stride_two():
    """digits at k = 2: level i is read exactly when bit i of t + 1 is set; latest reads every level."""
    for t in range(300):
        u = t + 1
        assert [i for i, _ in read_nodes(t, 2, "digits")] == [i for i in range(1, u.bit_length()) if u >> i & 1]
        assert read_nodes(t, 2, "latest") == [(i, u // 2**i - 1) for i in range(1, u.bit_length())]


@pytest.mark.parametrize("k", STRIDES)
@pytest.mark.parametrize("read", ["latest", "digits"])
def test_kept_and_read_counts(k, read):
    for pos in range(1, 300):
        r, n = kept(pos, k, read), read_counts(pos, k, read)
        assert len(r) == len(n) == n_levels(pos, k) + 1
        # what position pos-1 reads is among what is kept
        assert all(ni <= ri for ni, ri in zip(n, r))
        per_level = [0] * len(n)
        for i, _ in read_nodes(pos - 1, k, read):
            per_level[i] += 1
        assert per_level == n
        # the counter's siblings: at every level the pending nodes (digits) are kept
        assert all(ri >= di for ri, di in zip(r, digits(pos, k)))


@pytest.mark.parametrize("k", STRIDES)
def test_piece_lengths_are_aligned(k):
    for pos in [0, 1, k, k * k, 7, 30, 81, 100]:
        for T in [1, 2, 5, 40, 333]:
            pieces = piece_lengths(pos, T, k, max_chunk=64)
            assert sum(pieces) == T and all(0 < n <= 64 for n in pieces)
            p0 = pos
            for n in pieces:
                if p0:
                    assert p0 % k ** ceil_log(n, k) == 0
                p0 += n


@pytest.mark.parametrize("k", [2, 3, 7])
def test_counter_plan(k):
    c = Counter(k, capacity=12)
    for n in range(1, 2000):
        c.increment()
        ds = digits(n, k)
        assert list(c.plan[2 : 2 + len(ds)]) == ds and not any(c.plan[2 + len(ds) :])
        assert c.plan[0] == carry_height(n, k) and c.plan[1] == n_levels(n, k)
    fresh = Counter(k, capacity=12)
    fresh.set(1999)
    assert list(fresh.plan) == list(c.plan)
    small = Counter(k, capacity=1)
    for _ in range(k * k - 1):
        small.increment()
    with pytest.raises(ValueError, match="capacity"):
        small.increment()


@pytest.mark.parametrize("k", [2, 3, 4, 8])
@pytest.mark.parametrize("read", ["latest", "digits"])
def test_state_size_formula_at_powers_of_k(k, read):
    cfg = LMNConfig(vocab_size=7, d_model=8, n_heads=2, n_layers=2, n_banks=3, expand=1, stride=k, read=read)
    model = LMN(cfg).eval()
    tree = cfg.tree
    state = model.init_state(2)
    checks = {k**m + e for m in range(1, 4) for e in (-1, 0) if k**m + e <= 600}
    with torch.no_grad():
        for pos in range(1, max(checks) + 1):
            model.step(torch.zeros(2, dtype=torch.long), state)
            if pos in checks:
                assert state.nbytes == state_nbytes(cfg, 2, pos), pos
                # by hand, from the definition: kept nodes per level, and the slots pos-1 read
                nodes = sum(r * 3 * (1 + i) for i, r in enumerate(kept(pos, k, read)))
                slots = sum(1 if i == 0 else 3 * (1 + i) for i, _ in read_nodes(pos - 1, k, read))
                assert state.nbytes == 2 * 2 * (nodes + 2 * slots) * 8 * 4, pos
                assert tree.n_slots(pos - 1) == 1 + slots
    # k**m - 1 tokens: every level below m full of pending nodes; k**m: one node at level m
    m = 2
    assert kept(k**m - 1, k, "digits") == [k - 1] * m
    assert kept(k**m, k, "digits") == [0] * m + [1]
    assert kept(k**m, k, "latest") == [1] * (m + 1)


def test_tree_validation():
    with pytest.raises(ValueError, match="stride"):
        LMNConfig(stride=1)
    with pytest.raises(ValueError, match="stride"):
        LMNConfig(stride=True)
    with pytest.raises(ValueError, match="read"):
        LMNConfig(read="all")
    assert Tree(3, "digits").chunk(4096) == 3**7
    assert Tree(2).chunk(4096) == 4096


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("read", ["latest", "digits"])
def test_a_cap_restricts_levels_and_nothing_else(k, read):
    for cap in (1, 2, 3):
        tree = Tree(k, read, max_level=cap)
        for t in range(300):
            assert tree.read_nodes(t) == [(i, j) for i, j in read_nodes(t, k, read) if i <= cap]
            assert tree.kept(t + 1) == kept(t + 1, k, read)[: cap + 1]
            assert tree.n_levels(t + 1) == min(n_levels(t + 1, k), cap)
    with pytest.raises(ValueError, match="max_level"):
        LMNConfig(max_level=0)
