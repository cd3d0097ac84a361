"""Stream text from an LMN exported with `lmn export --format onnx`, with onnxruntime and
numpy only (no torch, no lmn):

    lmn export --checkpoint docs/results/runs/lmn-s1337 --format onnx --out lmn_step.onnx
    python examples/stream_onnx.py lmn_step.onnx --prompt "ROMEO:" --tokens 300 --temperature 0.8

The model is one pure step (token, pos, state) -> (logits, next pos, next state, overflow);
the state has a fixed size (see lmn_step.onnx.json, written beside the model; the same
description is inside the model's metadata) and is fed back each call. The prompt is
consumed one step per character. A stream never runs past the exported capacity: this
checks the length first, and the model's `overflow` output says if it would have.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="the .onnx file (its .json description beside it)")
    p.add_argument("--prompt", default="\n")
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    meta = description(args.model, session)
    if "chars" not in meta:  # a bytes or bpe run: its vocabulary is meta["tokenizer"] (lmn.data.tokenizer_from_dict)
        sys.exit(f"error: this example streams character-level runs; {args.model} was exported from a "
                 f"{meta.get('tokenizer', {}).get('kind')!r} run")
    chars = meta["chars"]
    stoi = {c: i for i, c in enumerate(chars)}
    unknown = sorted(set(args.prompt) - set(stoi))
    if unknown:
        sys.exit(f"error: prompt characters outside the vocabulary: {unknown}")
    capacity = meta["state"]["capacity_tokens"]  # null: a model with a capped tree, no limit
    if capacity is not None and len(args.prompt) + args.tokens > capacity:
        sys.exit("error: the stream would exceed the exported state's capacity (re-export with --max-tokens)")

    inputs = {i.name: i for i in session.get_inputs()}  # the shapes are the model's own
    dtype = np.float64 if "double" in inputs["nodes"].type else np.float32
    batch = inputs["token"].shape[0]
    state = {"pos": np.zeros(batch, dtype=np.int64)}
    for name in ("nodes", "slot_q", "slot_v"):
        state[name] = np.zeros(inputs[name].shape, dtype=dtype)  # the empty stream
    outputs = [o.name for o in session.get_outputs()]

    def step(token_id: int) -> np.ndarray:
        token = np.full(batch, token_id, dtype=np.int64)
        out = dict(zip(outputs, session.run(None, {"token": token, **state})))
        if "overflow" in out and out["overflow"].any():  # the state was full (never, after the check above)
            sys.exit("error: the stream reached the exported state's capacity (re-export with --max-tokens)")
        state.update(pos=out["next_pos"], nodes=out["next_nodes"], slot_q=out["next_slot_q"],
                     slot_v=out["next_slot_v"])
        return out["logits"][0].astype(np.float64)

    rng = np.random.default_rng(args.seed)
    for c in args.prompt:
        logits = step(stoi[c])
    out = [args.prompt]
    sys.stdout.write(args.prompt)
    for n in range(args.tokens):
        if args.temperature == 0:
            nxt = int(np.argmax(logits))
        else:
            z = logits / args.temperature
            prob = np.exp(z - z.max())
            nxt = int(rng.choice(len(prob), p=prob / prob.sum()))
        sys.stdout.write(chars[nxt])
        sys.stdout.flush()
        out.append(chars[nxt])
        if n + 1 < args.tokens:
            logits = step(nxt)
    sys.stdout.write("\n")
    state_bytes = sum(v.nbytes for v in state.values())
    print(f"[{len(args.prompt) + args.tokens} tokens, state {state_bytes:,} bytes]", file=sys.stderr)
    return 0


def description(model: str, session) -> dict:
    """The export's description: inside the model (metadata "lmn-stream-step"), else
    MODEL.json beside it (lmn_step.onnx.json), else the lmn_step.json of older exports --
    the one that describes this model's state (an older pt2 export of the same name may
    have replaced it)."""
    inside = session.get_modelmeta().custom_metadata_map.get("lmn-stream-step")
    if inside is not None:
        return json.loads(inside)
    nodes = next(i.shape for i in session.get_inputs() if i.name == "nodes")
    path = Path(model)
    for meta in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if meta.is_file():
            doc = json.loads(meta.read_text(encoding="utf-8"))
            if doc.get("file_format", "onnx") == "onnx" and doc["inputs"][2]["shape"] == nodes:
                return doc
    sys.exit(f"error: no description of {model} (its .json, written by lmn export beside it); re-export it")


if __name__ == "__main__":
    sys.exit(main())
