"""The synthetic probe tasks (lmn.tasks.mqar, passkey, distance, selective_copy, listops)
checked against their definitions by brute force on seeds, for determinism per seed, and
for their masks and buckets."""

import random
from collections import Counter

import numpy as np
import pytest
import torch

from lmn.tasks import make_task
from lmn.tasks.listops import END, OP_ID, PAD, ListOpsTask, apply_op
from lmn.tasks.mqar import MQARTask
from lmn.tasks.passkey import FIRST_FILLER, KEY, QUERY, PasskeyTask
from lmn.tasks.distance import DistanceTask
from lmn.tasks.selective_copy import SelectiveCopyTask
from lmn.trainer import TrainConfig

SEEDS = (0, 1, 7, 12345)


def draw(task, n, seed):
    return task.batch("train", n, torch.Generator().manual_seed(seed))


def check_common(task, batch, n):
    T = task.seq_len
    assert batch.x.shape == batch.y.shape == batch.mask.shape == (n, T)
    assert batch.x.dtype == batch.y.dtype == torch.int64 and batch.mask.dtype == torch.bool
    assert 0 <= int(batch.x.min()) and int(batch.x.max()) < task.vocab_size
    assert 0 <= int(batch.y[batch.mask].min()) and int(batch.y[batch.mask].max()) < task.vocab_size
    assert torch.equal(batch.y[~batch.mask], torch.zeros_like(batch.y[~batch.mask]))


TASKS = [
    ("mqar", 64, {"pairs": 4, "vocab": 64}),
    ("mqar", 128, {"pairs": 8, "vocab": 8192}),
    ("passkey", 64, {"key_len": 4}),
    ("distance", 80, {"distances": "1,2,4,8,16,32,64"}),
    ("selective-copy", 64, {"n_tokens": 8}),
    ("listops", 64, {"min_len": 8, "max_depth": 4, "max_args": 5}),
]


@pytest.mark.parametrize("name, T, opts", TASKS)
def test_determinism_and_masks(name, T, opts):
    task = make_task(TrainConfig(task=name, block_size=T, task_options=opts))
    a, b, c = draw(task, 6, 3), draw(task, 6, 3), draw(task, 6, 4)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.x, c.x)
    check_common(task, a, 6)
    # the fixed test set: the same in a new task object, whatever the evaluation batch size
    t1, t2 = task.test_set(), make_task(TrainConfig(task=name, block_size=T, task_options=opts)).test_set()
    assert torch.equal(t1.x, t2.x) and torch.equal(t1.y, t2.y)
    assert torch.equal(torch.cat([bt.x for bt in task.whole(7)]), t1.x) and len(t1.x) == task.n_test
    # per-bucket counts add up to the scored positions
    logits = torch.randn(6, T, task.vocab_size)
    m = task.summarize(task.score(logits, a))
    assert sum(v for k, v in m.items() if k.startswith("count@")) == m["count"] == int(a.mask.sum())
    assert task.record()["name"] == name


def test_unknown_option_is_refused():
    with pytest.raises(ValueError, match="no option"):
        make_task(TrainConfig(task="mqar", block_size=64, task_options={"pair": 4}))
    with pytest.raises(ValueError, match="4 \\* pairs"):
        make_task(TrainConfig(task="mqar", block_size=64, task_options={"pairs": 17}))


# ----------------------------------------------------------------------------- MQAR
@pytest.mark.parametrize("seed", SEEDS)
def test_mqar_answers_by_brute_force(seed):
    task = MQARTask(128, pairs=8, vocab=64, n_test=8)
    batch = draw(task, 16, seed)
    D, V, T = 8, 64, 128
    for x, y, mask in zip(batch.x.tolist(), batch.y.tolist(), batch.mask.tolist()):
        keys, values = x[0 : 2 * D : 2], x[1 : 2 * D : 2]
        assert len(set(keys)) == D and len(set(values)) == D
        assert all(1 <= k < V // 2 for k in keys) and all(V // 2 <= v < V for v in values)
        table = dict(zip(keys, values))
        queries = [t for t in range(T) if mask[t]]
        assert len(queries) == D and all(t >= 2 * D and (t - 2 * D) % 2 == 0 for t in queries)
        assert sorted(x[t] for t in queries) == sorted(keys)  # each key queried exactly once
        for t in queries:
            assert y[t] == table[x[t]]
        assert not any(mask[:2 * D])


def test_mqar_gaps_follow_the_power_law():
    task = MQARTask(256, pairs=16, vocab=512, n_test=8)
    batch = draw(task, 400, 0)
    gaps = ((torch.nonzero(batch.mask)[:, 1] - 32) // 2).tolist()
    counts = Counter(gaps)
    space = (256 - 32) // 2
    # p(g) ∝ (g+1)^(a-1): P(g = 0) / P(g = space-1) is about space^0.99 before the
    # without-replacement draw flattens it; near gaps must be much more frequent than far ones
    assert counts[0] > 5 * max(counts[space - 1], 1)
    near = sum(counts[g] for g in range(10))
    far = sum(counts[g] for g in range(space - 10, space))
    assert near > 3 * far
    assert abs(float(task.gap_p.sum()) - 1) < 1e-9


def test_mqar_buckets_are_query_distances():
    task = MQARTask(64, pairs=4, vocab=64, n_test=8)
    batch = draw(task, 8, 5)
    buckets = task.buckets(batch.x)
    for b in range(8):
        keypos = {batch.x[b, 2 * i].item(): 2 * i for i in range(4)}
        for t in torch.nonzero(batch.mask[b])[:, 0].tolist():
            d = t - keypos[batch.x[b, t].item()]
            assert buckets[b, t] == 2 ** int(np.floor(np.log2(d)))


# ----------------------------------------------------------------------------- passkey
@pytest.mark.parametrize("seed", SEEDS)
def test_passkey_by_brute_force(seed):
    task = PasskeyTask(96, key_len=3, vocab=20, n_test=8)
    batch = draw(task, 16, seed)
    T, L = 96, 3
    for x, y, mask, bk in zip(batch.x.tolist(), batch.y.tolist(), batch.mask.tolist(), task.buckets(batch.x).tolist()):
        s = x.index(KEY)
        assert x.count(KEY) == 1 and x.count(QUERY) == 1 and x[T - L] == QUERY
        key = x[s + 1 : s + 1 + L]
        assert all(0 <= k <= 9 for k in key)
        assert [y[t] for t in range(T) if mask[t]] == key and mask == [False] * (T - L) + [True] * L
        assert x[T - L + 1 :] == key[: L - 1]
        d = (T - L) - s
        assert L + 1 <= d <= T - L
        others = [v for i, v in enumerate(x) if not (s <= i <= s + L or i >= T - L)]
        assert all(v >= FIRST_FILLER for v in others)
        assert bk[0] == 2 ** int(np.floor(np.log2(d)))


def test_passkey_test_set_cycles_distances():
    task = PasskeyTask(300, key_len=4, n_test=40, distances="16,32,64,128,256")
    test = task.test_set()
    q = 300 - 4
    ds = [q - row.tolist().index(KEY) for row in test.x]
    assert Counter(ds) == {16: 8, 32: 8, 64: 8, 128: 8, 256: 8}
    assert task.distances == (16, 32, 64, 128, 256)
    assert PasskeyTask(2048).distances == (16, 32, 64, 128, 256, 512, 1024)
    with pytest.raises(ValueError, match="distances"):
        PasskeyTask(64, distances="128")


# ----------------------------------------------------------------------------- distance probe
@pytest.mark.parametrize("seed", SEEDS)
def test_distance_probe_by_brute_force(seed):
    grid = (1, 2, 4, 8, 16, 32)
    task = DistanceTask(64, content=10, distances=",".join(map(str, grid)), n_queries=6, n_test=8)
    batch = draw(task, 16, seed)
    assert task.vocab_size == 10 + len(grid)
    for x, y, mask in zip(batch.x.tolist(), batch.y.tolist(), batch.mask.tolist()):
        cues = [t for t in range(64) if x[t] >= 10]
        assert cues == [t for t in range(64) if mask[t]] and len(cues) == 6
        for t in cues:
            d = grid[x[t] - 10]
            assert t - d >= 0 and x[t - d] < 10  # the recalled token is content
            assert y[t] == x[t - d]


def test_distance_probe_covers_every_distance():
    task = DistanceTask(288, distances="1;2;4;8;16;32;64;128;256", n_test=256)
    m = task.summarize(task.score(torch.zeros(256, 288, task.vocab_size), task.test_set()))
    counts = [m[f"count@{d}"] for d in task.distances]
    assert min(counts) > 0.6 * max(counts)  # d drawn uniformly, then its position
    assert sum(counts) == 256 * 8


# ----------------------------------------------------------------------------- selective copying
@pytest.mark.parametrize("seed", SEEDS)
def test_selective_copying_by_brute_force(seed):
    task = SelectiveCopyTask(60, n_tokens=10, vocab=16, n_test=8)
    batch = draw(task, 16, seed)
    region = 60 - 10
    for x, y, mask, bk in zip(batch.x.tolist(), batch.y.tolist(), batch.mask.tolist(), task.buckets(batch.x).tolist()):
        data = [(i, v) for i, v in enumerate(x[:region]) if v != 0]
        assert len(data) == 10 and all(1 <= v <= 14 for _, v in data)
        assert x[region:] == [15] * 10 and mask == [False] * region + [True] * 10
        assert y[region:] == [v for _, v in data]  # in order, noise skipped
        for i, (p, _) in enumerate(data):
            assert bk[region + i] == 2 ** int(np.floor(np.log2(region + i - p)))


# ----------------------------------------------------------------------------- ListOps
def evaluate_tokens(ids: list[int]) -> int:
    """An independent evaluator: a stack machine over the token sequence."""
    names = {v: k for k, v in OP_ID.items()}
    stack: list = []
    for t in ids:
        if t in names:
            stack.append([names[t]])
        elif t == END:
            op, *args = stack.pop()
            value = {"MIN": min, "MAX": max, "SM": lambda a: sum(a) % 10,
                     "MED": lambda a: int(np.median(a))}[op](args)
            if stack:
                stack[-1].append(value)
            else:
                stack.append(value)
        else:
            if stack and isinstance(stack[-1], list):
                stack[-1].append(t)
            else:
                stack.append(t)
    assert len(stack) == 1
    return stack[0]


@pytest.mark.parametrize("seed", SEEDS)
def test_listops_by_brute_force(seed):
    task = ListOpsTask(128, min_len=20, max_len=100, max_depth=5, max_args=6, n_test=8)
    batch = draw(task, 12, seed)
    for x, y, mask, bk in zip(batch.x.tolist(), batch.y.tolist(), batch.mask.tolist(), task.buckets(batch.x).tolist()):
        ids = [t for t in x if t != PAD]
        assert x[: 128 - len(ids)] == [PAD] * (128 - len(ids))  # left padding
        assert 20 < len(ids) < 100 and ids[0] in OP_ID.values() and ids[-1] == END
        assert mask == [False] * 127 + [True] and y[-1] == evaluate_tokens(ids)
        assert bk[-1] == 2 ** int(np.floor(np.log2(len(ids))))


def test_listops_median_is_lras():
    rng = random.Random(0)
    for _ in range(200):
        values = [rng.randrange(10) for _ in range(rng.randint(2, 10))]
        assert apply_op("MED", values) == int(np.median(values))
