"""A one-minute tour: build the paper's model, check that its parallel, reference and
streaming forms agree, and generate from it (random weights, so the text is noise).

    python -m lmn.demo
"""

from __future__ import annotations

import argparse
import time

import torch

from . import LMN, LMNConfig, reference_forward


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmn.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=257, help="tokens to check (default 257)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens to generate (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.length < 1 or args.tokens < 0:
        parser.error("--length must be >= 1 and --tokens >= 0")

    torch.manual_seed(args.seed)
    model = LMN(LMNConfig()).eval()
    print(f"paper model: {model.num_parameters():,} parameters (paper: 71,489)")

    idx = torch.randint(0, model.config.vocab_size, (2, args.length))
    with torch.no_grad():
        t0 = time.perf_counter()
        parallel = model(idx)
        t1 = time.perf_counter()
        reference = reference_forward(model, idx)
        state = model.init_state(2)
        steps = torch.stack([model.step(idx[:, t], state)[0] for t in range(args.length)], dim=1)
    d_ref = (parallel - reference).abs().max().item()
    d_step = (steps - reference).abs().max().item()
    print(f"parallel forward of 2 x {args.length} tokens: {1e3 * (t1 - t0):.1f} ms")
    print(f"max |parallel - reference| = {d_ref:.2e}   max |streaming - reference| = {d_step:.2e}")
    print(f"streaming state after {state.pos} tokens: {state.n_levels} levels, {state.nbytes:,} bytes")

    out = model.generate(idx[:1, :8], args.tokens, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(args.seed))
    print(f"generated ids (random weights): {out[0, 8:].tolist()}")
    ok = d_ref <= 1e-5 and d_step <= 1e-5
    print("OK: all forms agree" if ok else "MISMATCH between forms")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
