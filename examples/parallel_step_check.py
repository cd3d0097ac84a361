"""One training step of the paper's LMN through each data-parallel path (DDP, FSDP2 as
`lmn train --fsdp` shards it) against the one-process step on the same global batch
(16 x 512 tokens); prints one JSON line (and writes it to --out).

    torchrun --standalone --nproc_per_node 2 examples/parallel_step_check.py            # CPU, gloo
    torchrun --standalone --nproc_per_node 1 examples/parallel_step_check.py --device cuda --out step.json

Per path: the global loss (mean over processes) next to the one-process loss, the largest
weight difference after the AdamW step (Adam turns rounding-level gradient differences
into at most ~lr per weight), and the step's wall time.
"""

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from lmn import LMN, LMNConfig
from lmn.trainer.fsdp import full_checkpoint, shard_model

LR, WD = 1e-3, 0.01


def build(device):
    torch.manual_seed(1337)
    return LMN(LMNConfig()).to(device)


def loss_of(model, x):
    logits = model(x[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())


def step(model, params, x, device):
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WD)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    loss = loss_of(model, x)
    loss.backward()
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return loss.detach(), time.perf_counter() - t0, opt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    cuda = args.device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    x = torch.randint(0, 65, (16, 513), generator=torch.Generator().manual_seed(1)).to(device)
    lo, hi = rank * 16 // world, (rank + 1) * 16 // world

    ref = build(device)
    ref_loss, ref_s, _ = step(ref, ref.parameters(), x, device)
    ref_w = {k: v.detach().cpu() for k, v in ref.state_dict().items()}
    out = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__,
           "world_size": world, "backend": dist.get_backend(), "batch": [16, 512],
           "single": {"loss": ref_loss.item(), "step_s": ref_s}}

    def report(name, loss, seconds, weights):
        loss = loss.clone()
        dist.all_reduce(loss)
        if rank == 0:
            diff = max((weights[k].cpu() - ref_w[k]).abs().max().item() for k in ref_w)
            out[name] = {"loss": loss.item() / world, "max_weight_diff": diff, "step_s": seconds}

    model = build(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if cuda else None)
    loss, seconds, _ = step(ddp, ddp.parameters(), x[lo:hi], device)
    report("ddp", loss, seconds, model.state_dict())

    model = shard_model(build(device), device)  # fully_shard per block, then the root
    loss, seconds, opt = step(model, model.parameters(), x[lo:hi], device)
    weights, _ = full_checkpoint(model, opt)  # gathered on process 0
    report("fsdp2", loss, seconds, weights)

    if rank == 0:
        line = json.dumps(out)
        print(line)
        if args.out:
            with open(args.out, "w") as f:
                f.write(line + "\n")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
