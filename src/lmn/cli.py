"""The ``lmn`` command line.

    lmn train --preset paper-lmn --seed 1337 --out runs/lmn-s1337
    lmn train --out runs/lmn-s1337 --resume
    lmn train --preset paper-lmn --task-opt tokenizer=bpe:1024 --out runs/lmn-bpe
    lmn data prepare my_texts/ --tokenizer bpe:4096 --out data/my_texts
    lmn train --preset paper-lmn --dataset data/my_texts --out runs/lmn-mine
    lmn generate --checkpoint runs/lmn-s1337 --prompt "ROMEO:" --tokens 500
    lmn plot runs/lmn-s1337 runs/gpt2-s1337 -o curves.png

Each subcommand is one ``_add_<name>_parser(sub)`` function that registers its flags
and the function that runs it; add a subcommand by writing one and listing it in
``SUBCOMMANDS``. Bad input ends with one line on stderr and exit status 2 (1 for an
unexpected failure; set LMN_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import fields
from pathlib import Path
from .validation import check_int

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad input found by a subcommand: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line (no usage block) like every other error."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ----------------------------------------------------------------------------- train
def _parse_value(text: str):
    """``--model-opt`` values: JSON literals (``64``, ``1e-5``, ``null``, ``true``), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _model_opt(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), _parse_value(value)


# TrainConfig fields that get a flag spelled differently from --field-name.
_FLAG_NAMES = {"out_dir": ("--out", "--out-dir")}
_NO_FLAG = {"model_config", "task_options"}  # set with --model-opt / --task-opt KEY=VALUE


def _add_train_parser(sub) -> None:
    from .data.tokenizer import TOKENIZER_SPEC_HELP
    from .trainer import PRESETS, TrainConfig

    p = sub.add_parser(
        "train",
        help="train LMN or another registered model kind (paper protocol by default)",
        description="Train a model. Start from --preset, then override any field with its flag. "
        "The resolved config is written to RUN/config.json.",
    )
    p.add_argument("--preset", help=f"named configuration: {', '.join(PRESETS)} (default paper-lmn)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint "
                   "(refused when its config.json was edited since)")
    p.add_argument("--force", action="store_true", help="start over in an existing run directory --out: deletes "
                   "the files its run manifest (lmn-run.json) records lmn wrote, nothing else; refuses a directory "
                   "that is not an lmn run. Neither runs while another lmn train holds --out (RUN/lmn-run.lock)")
    p.add_argument(
        "--model-opt", action="append", type=_model_opt, default=[], metavar="KEY=VALUE",
        help="override a field of the model's config, e.g. --model-opt d_model=64 (repeatable)",
    )
    p.add_argument(
        "--task-opt", action="append", type=_model_opt, default=[], metavar="KEY=VALUE",
        help="set an option of the task (repeatable). The text task's: tokenizer=SPEC, one of "
        f"{TOKENIZER_SPEC_HELP}; saved as RUN/tokenizer.json and read back by generate, convert, export and "
        "the probes; losses are nats per token, and val_bpb (bits per byte) compares tokenizers",
    )
    p.add_argument("--dataset", default=None, metavar="DIR",
                   help="train on a token dataset written by lmn data prepare (short for --task dataset --data DIR): "
                   "windows are read from its shards, never the whole corpus; its split and tokenizer are used "
                   "(--train-frac and --task-opt do not apply); the run records its manifest's sha256 and --resume "
                   "refuses another dataset")
    p.add_argument("--log", action="append", default=[], metavar="LOGGER",
                   help="also log the metrics to tensorboard (RUN/tb/) or wandb (RUN/wandb/; mode $WANDB_MODE, or "
                   "wandb:offline / wandb:online), beside RUN/metrics.jsonl; repeatable or comma-separated (default: "
                   "none). Needs pip install 'torch-lmn[tensorboard]' / 'torch-lmn[wandb]'; give it again on --resume")
    p.add_argument("--wandb-project", default=None, metavar="NAME",
                   help="wandb project of --log wandb (default: the run's recorded one, else $WANDB_PROJECT, else lmn)")
    for f in fields(TrainConfig):
        if f.name in _NO_FLAG:
            continue
        names = _FLAG_NAMES.get(f.name, ("--" + f.name.replace("_", "-"),))
        helptext = f"{f.metadata['help']} (default {f.default!r} unless the preset sets it)"
        if f.type in ("bool", bool):
            p.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        else:
            kind = {"int": int, "float": float, "str": str}[str(f.type)]
            p.add_argument(*names, dest=f.name, type=kind, default=None, help=helptext)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    import torch

    from .trainer import PRESETS, TrainConfig, preset_config, saved_config, train
    from .trainer.loggers import check_available, parse_log

    log = parse_log(args.log)
    if args.wandb_project is not None and not any(spec.startswith("wandb") for spec in log):
        raise UsageError("--wandb-project names the project of --log wandb; add --log wandb (or drop it)")
    check_available(log)  # before the run's config is read
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if f.name not in _NO_FLAG and getattr(args, f.name) is not None}
    model_opts, task_opts = dict(args.model_opt), dict(args.task_opt)
    if args.dataset is not None:
        if overrides.get("task", "dataset") != "dataset":
            raise UsageError(f"--dataset trains the dataset task; drop --task {overrides['task']} (or --dataset)")
        if "data" in overrides:
            raise UsageError("--dataset DIR is the data of the run; drop --data (a corpus of the text task)")
        overrides.update(task="dataset", data=args.dataset)
    if args.preset is not None and args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; choose from {', '.join(PRESETS)}")
    preset = args.preset
    if args.resume and preset is None:
        # Continue from the run's own config; flags given now still apply (and are checked).
        if "out_dir" not in overrides:
            raise UsageError("--resume needs --out RUN")
        out = Path(overrides["out_dir"])
        if not out.exists():
            raise UsageError(f"cannot resume {out}: there is no such directory, so nothing to resume; start the run "
                             "with its full lmn train command (--resume may stay)")
        if out.is_dir() and not (out / "config.json").exists():
            raise UsageError(f"cannot resume {out}: it has no config.json (it stopped before its config was written, "
                             "or is not a run); run the original lmn train command again (--resume may stay)")
        saved = saved_config(out)
        cfg_dict = {**saved["train"], **overrides}
        cfg_dict["model_config"] = {**saved["train"].get("model_config", {}), **model_opts}
        cfg_dict["task_options"] = {**saved["train"].get("task_options", {}), **task_opts}
        cfg = TrainConfig.from_dict(cfg_dict)
        preset = saved.get("preset")
    else:
        preset = preset or "paper-lmn"
        cfg = preset_config(preset, model_config=model_opts, task_options=task_opts, **overrides)
    if cfg.threads:  # a process-wide setting: the command's to make, not the library's
        torch.set_num_threads(cfg.threads)
    summary = train(cfg, resume=args.resume, force=args.force, preset=preset, log=log,
                    wandb_project=args.wandb_project)
    if summary.get("whole_val_loss") is not None and summary.get("final_val_loss") is not None:
        per = [f"{summary[k]:.4f} {unit}" for k, unit in (("whole_val_bits_per_char", "bits/char"),
                                                          ("whole_val_bpb", "bits/byte")) if k in summary]
        per = f" ({', '.join(per)})" if per else ""
        print(f"{cfg.out_dir}: final val {summary['final_val_loss']:.4f} | whole val {summary['whole_val_loss']:.4f} "
              f"nats{per}")
    return 0


# ----------------------------------------------------------------------------- data
def _add_data_parser(sub) -> None:
    from .data.dataset import DEFAULT_SHARD_TOKENS
    from .data.tokenizer import TOKENIZER_SPEC_HELP

    p = sub.add_parser(
        "data",
        help="prepare token datasets on disk (lmn data prepare) for lmn train --dataset",
        description="Token datasets: a corpus tokenised once into raw token shards that lmn train --dataset reads a "
        "window at a time (lmn.data.dataset).",
    )
    data_sub = p.add_subparsers(dest="data_command", metavar="DATA", parser_class=_Parser)
    data_sub.required = True
    d = data_sub.add_parser(
        "prepare", help="tokenise text files, folders or JSONL into a dataset directory",
        description="Tokenise SOURCE... once into DIR: token shards (raw little-endian uint8/uint16/uint32, the "
        "smallest that holds every id; np.memmap reads them), per split an int64 file of document start offsets, "
        "the tokenizer, and manifest.json (sources and their sha256, tokenizer, dtype, token and document counts, "
        "how the split was made). The input is streamed, so a corpus larger than RAM prepares; DIR is written whole "
        "or not at all. A text file is one document; a .jsonl/.ndjson file one per line (--text-field); a folder "
        "one per file, recursively, sorted by path, hidden names left out (or --glob). Split: by documents "
        "(evenly spaced, deterministic), or by position for a single document (as --data's text task).",
    )
    d.add_argument("sources", nargs="+", metavar="SOURCE", help="text files, .jsonl files or folders, read in order")
    d.add_argument("--out", required=True, metavar="DIR", help="dataset directory to write")
    d.add_argument("--tokenizer", required=True, metavar="SPEC", help=f"one of {TOKENIZER_SPEC_HELP}; bpe is fitted "
                   "on the training split only")
    d.add_argument("--val-frac", type=float, default=0.1, metavar="F",
                   help="fraction of the documents (of a single document: of its characters, at the end) that "
                   "validates (default 0.1)")
    d.add_argument("--text-field", default="text", metavar="NAME", help="the field of a JSONL line holding its text "
                   "(default text)")
    d.add_argument("--glob", default=None, metavar="PATTERN", help="read only the files of a SOURCE folder matching "
                   "PATTERN, relative to it (e.g. '**/*.txt'; default: every regular file, hidden names left out)")
    d.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, metavar="N",
                   help=f"tokens per shard file at most (default 2**28 = {DEFAULT_SHARD_TOKENS:,})")
    d.add_argument("--force", action="store_true", help="replace DIR when it holds a dataset already")
    d.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    d.set_defaults(func=_cmd_data_prepare)


def _cmd_data_prepare(args) -> int:
    from .data.dataset import SPLITS, log_to_stderr, prepare

    if args.tokenizer.startswith("bpe"):
        need("tokenizers", "bpe", f"--tokenizer {args.tokenizer}")
    manifest = prepare(args.sources, args.out, args.tokenizer, val_frac=args.val_frac, text_field=args.text_field,
                       glob=args.glob, shard_tokens=args.shard_tokens, force=args.force,
                       log=None if args.quiet else log_to_stderr)
    splits = manifest["splits"]
    shown = ", ".join(f"{s} {splits[s]['tokens']:,} tokens ({splits[s]['documents']:,} document(s), "
                      f"{len(splits[s]['shards'])} shard(s))" for s in SPLITS)
    print(f"{args.out}: {manifest['documents']['total']:,} document(s), {shown}; {manifest['tokenizer']['spec']} "
          f"(vocab {manifest['tokenizer']['vocab_size']:,}), {manifest['dtype']}")
    return 0


# ----------------------------------------------------------------------------- generate
def _add_generate_parser(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="stream text from a trained LMN run",
        description="Prefill the prompt, then sample with LMN's streaming state (constant-size memory).",
    )
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="run directory written by lmn train")
    p.add_argument("--prompt", default="\n", help="text to continue, encoded with the run's tokenizer (a char run: "
                   "every character must be in its vocabulary; bytes and bpe runs take any text) (default: a newline)")
    p.add_argument("--tokens", type=int, default=500, help="tokens to generate, characters for a char run (default 500)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 is greedy (default 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens (default: all)")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampler (default: nondeterministic)")
    p.add_argument("--device", default="cpu", help="device to run on (default cpu)")
    p.add_argument("--native", action="store_true", help="run the streaming steps through the C kernel "
                   "(lmn.native; CPU only, compiled with the system C compiler on first use)")
    p.add_argument("--max-level", default=None, metavar="N|trained",
                   help="cap the tree at levels 1..N (same weights; a fixed-size state); 'trained': the levels "
                        "the run's training windows had. Default: the run's own tree")
    p.set_defaults(func=_cmd_generate)


def _cmd_generate(args) -> int:
    import torch

    from .kinds import get_kind
    from .trainer import load_run

    if args.tokens < 0:
        raise UsageError(f"--tokens must be >= 0, got {args.tokens}")
    if not args.temperature >= 0 or args.temperature == float("inf"):
        raise UsageError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if 0 < args.temperature < MIN_TEMPERATURE:  # logits / temperature would overflow to inf
        raise UsageError(f"--temperature {args.temperature:g} is too small to sample with; give 0 for greedy "
                         f"decoding, or at least {MIN_TEMPERATURE:g}")
    _check_device(args.device)
    if not args.prompt:
        raise UsageError("--prompt is empty; give at least one character")
    if args.native and args.device != "cpu":
        raise UsageError(f"--native runs on the CPU only, not on --device {args.device}")
    if args.native:
        from .native import find_compiler

        if find_compiler() is None:
            raise UsageError("--native needs a C compiler (cc, gcc or clang, or $CC); none was found")
    model, tokenizer, doc = load_run(args.checkpoint, device=args.device)
    kind = get_kind(doc["train"]["model"])
    if kind.stream is None:
        from .kinds import kind_names

        streams = ", ".join(n for n in kind_names("train") if get_kind(n).stream is not None)
        raise UsageError(f"{args.checkpoint} is a {kind.name!r} run, which has no streaming decoder; generate "
                         f"streams from runs of {streams}")
    if args.native:  # build the C kernel now: a failing compiler is an error before any output
        from .model import LMN
        from .native import NativeStepper

        if not isinstance(model, LMN):
            raise UsageError(f"--native runs an LMN's C step; {args.checkpoint} is a {kind.name!r} run; drop --native")

        try:
            NativeStepper(model, batch_size=1)
        except (RuntimeError, ValueError) as err:
            raise UsageError(f"--native: {err}; or drop --native to use LMN.step") from None
    if args.top_k is not None and not 1 <= args.top_k:
        raise UsageError(f"--top-k must be >= 1, got {args.top_k}")
    unknown = tokenizer.unknown_chars(args.prompt)
    if unknown:
        raise UsageError(
            f"the prompt has character(s) outside the vocabulary of {args.checkpoint}: "
            f"{', '.join(repr(c) for c in unknown)}"
        )
    model = _cap_levels(model, doc, args)  # after every check: a note never precedes an error
    idx = tokenizer.encode(args.prompt)[None].to(args.device)  # (1, T)
    generator = None
    if args.seed is not None:
        generator = torch.Generator(device=args.device).manual_seed(args.seed)
    out = sys.stdout
    out.write(args.prompt)
    decode = tokenizer.stream_decoder()  # a character whose bytes span several tokens comes out whole
    for tok in kind.stream(model, idx, args.tokens, args.temperature, args.top_k, generator, args.native):
        out.write(decode(tok))
        out.flush()
    out.write(decode.flush() + "\n")
    return 0


MIN_TEMPERATURE = 1e-6


def _cap_levels(model, doc: dict, args):
    """Apply ``--max-level``; without it, say on stderr when the text will reach tree levels
    the run's training windows never had."""
    from .tree import Tree

    if not hasattr(model, "with_max_level"):  # no tree: a peer with its own streaming decoder
        if args.max_level is not None:
            raise UsageError(f"--max-level caps an LMN's tree; {args.checkpoint} is a {doc['train']['model']!r} run")
        return model
    tree = Tree.of(model.config)
    block = doc["train"].get("block_size")
    trained = tree.n_levels_in(block) if block else None
    text = args.max_level
    if text is None:
        first_unseen = tree.stride ** (trained + 1) if trained is not None else None
        if (first_unseen is not None and (tree.max_level is None or tree.max_level > trained)
                and len(args.prompt) + args.tokens >= first_unseen):
            print(f"note: {args.checkpoint} was trained on windows of {block} characters (tree levels 1-{trained}); "
                  f"from character {first_unseen:,} on the tree reads levels it never trained, which raised the "
                  f"loss of the Table 1 model (docs/results/probes/context.md); --max-level trained caps it",
                  file=sys.stderr)
        return model
    if text == "trained":
        if trained is None:
            raise UsageError(f"--max-level trained: {args.checkpoint}'s config records no training window; give a number")
        level = trained
    else:
        try:
            level = int(text)
        except ValueError:
            raise UsageError(f"--max-level must be a whole number >= 1 or 'trained', got {text!r}") from None
        if level < 1:
            raise UsageError(f"--max-level must be a whole number >= 1 or 'trained', got {text!r}")
    return model.with_max_level(level).eval()


def _check_device(text: str) -> None:
    """A device this machine has (one line naming what to use instead)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device must be cpu, cuda or cuda:N, got {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise UsageError(f"--device {text}: CUDA is not available on this machine ({why}); use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {text}: this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type not in ("cpu", "cuda"):
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as err:
            raise UsageError(f"--device {text} is not usable here ({str(err).splitlines()[0]}); use --device cpu") from None


def need(module: str, extra: str, what: str) -> None:
    """Stop with the extra to install when ``module`` is missing (before any work)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{what} needs {module}, which is not installed; install it with: pip install 'torch-lmn[{extra}]'")


# ----------------------------------------------------------------------------- plot
def _add_plot_parser(sub) -> None:
    p = sub.add_parser("plot", help="draw train/validation loss curves of runs into one PNG")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories written by lmn train")
    p.add_argument("-o", "--output", default="loss_curves.png", help="PNG to write (default loss_curves.png)")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    p.add_argument("--title", default="Training curves", help="figure title")
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args) -> int:
    from .atomic import save_figure
    from .trainer import read_metrics

    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise UsageError(f"--output must be a .png file, got {args.output!r}")
    need("matplotlib", "train", "lmn plot")
    if output.exists() and not args.force:
        raise UsageError(f"{output} exists; pass --force to overwrite it")
    curves = []
    for run in args.runs:
        if not Path(run).is_dir():
            raise UsageError(f"run directory {run} does not exist")
        evals = [r for r in read_metrics(run) if r.get("type") == "eval"]
        if not evals:
            raise UsageError(f"{run} has no evaluation records yet")
        curves.append((Path(run).name, evals))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, evals) in enumerate(curves):
        color = f"C{i % 10}"
        steps = [r["step"] for r in evals]
        ax.plot(steps, [r["val_loss"] for r in evals], color=color, label=f"{name} val")
        ax.plot(steps, [r["train_loss"] for r in evals], color=color, linestyle="--", alpha=0.7, label=f"{name} train")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/char)")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    try:
        save_figure(fig, output, dpi=120)
    finally:
        plt.close(fig)
    print(output)
    return 0


# ----------------------------------------------------------------------------- bench
def _add_bench_parser(sub) -> None:
    from .bench.cli import add_bench_subcommands

    p = sub.add_parser(
        "bench",
        help="efficiency benchmarks: streaming decode and training step vs length",
        description="Efficiency benchmarks against GPT-2 and the recurrent baselines; every point in a fresh process. "
        "Results: JSON + markdown table + PNG plots (see lmn bench decode --help).",
    )
    add_bench_subcommands(p, _Parser)
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args) -> int:
    from .bench.cli import run

    return run(args)


# ----------------------------------------------------------------------------- convert / export
def _add_convert_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="write a trained LMN run as a HuggingFace transformers model (lmn.hf)",
        description="Turn an lmn train run directory into a transformers model directory (config.json, "
        "model.safetensors, the run's tokenizer); load it after `import lmn.hf` with AutoModelForCausalLM. "
        "OUT is written whole beside itself and then put in place: it is the previous directory or the new one, "
        "never a mixture (a full disk or a kill leaves the previous one as it was).",
    )
    p.add_argument("run", metavar="RUN", help="run directory written by lmn train")
    p.add_argument("out", metavar="OUT", help="directory to write")
    p.add_argument("--force", action="store_true", help="replace a non-empty OUT (files of OUT that the conversion "
                   "does not write are kept)")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args) -> int:
    try:
        from .hf import convert_run
    except ImportError as err:
        raise UsageError(f"{err}") from None
    print(convert_run(args.run, args.out, force=args.force))
    return 0


def _add_export_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export LMN's streaming step (fixed-shape state) to ONNX or torch.export (lmn.export)",
        description="Write the streaming step of a trained LMN run as a pure function (token, pos, state tensors) -> "
        "(logits, next state, overflow) with a fixed-capacity state: an ONNX model or a torch.export program, plus "
        "a JSON file beside it (FILE.json: lmn_step.onnx.json, lmn_step.pt2.json) describing the inputs, outputs, "
        "state layout and vocabulary. Both files are written whole or not at all.",
    )
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="run directory written by lmn train")
    p.add_argument("--format", required=True, choices=("onnx", "pt2"), help="onnx (onnxruntime) or pt2 (torch.export)")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="longest stream the state must hold (sets its capacity; default 2**31 - 1)")
    p.add_argument("--batch-size", type=int, default=1, help="streams per call (default 1)")
    p.add_argument("--out", default=None, help="file to write (default RUN/lmn_step.onnx or .pt2; its description "
                   "goes beside it as OUT.json)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=_cmd_export)


def export_run(run_dir, fmt: str, out: str | os.PathLike | None = None, max_tokens: int | None = None,
               batch_size: int = 1, force: bool = False):
    """Export the model of an ``lmn train`` run (``lmn export``): ``(model file, its JSON
    description)``, by :func:`lmn.export.export_model`. ``out`` defaults to
    ``RUN/lmn_step.FMT``, the description is ``OUT.json`` (``lmn_step.onnx.json``); the
    run's tokenizer goes into it (``"tokenizer"``: its ``tokenizer.json``, any kind, read
    back with :func:`lmn.data.tokenizer_from_dict`; a char run's characters also as
    ``"chars"``), so that a runtime needs nothing else."""
    from .export import DEFAULT_MAX_TOKENS, export_model
    from .model import LMN
    from .trainer import load_run

    if fmt not in ("onnx", "pt2"):
        raise ValueError(f"--format must be onnx or pt2, got {fmt!r}")
    check_int("batch size", batch_size, min=1)
    model, tokenizer, doc = load_run(run_dir)
    if not isinstance(model, LMN):
        raise ValueError(f"{run_dir} is a {doc['train'].get('model')!r} run; export takes LMN runs")
    path = Path(out) if out is not None else Path(run_dir) / f"lmn_step.{fmt}"
    return export_model(model, path, fmt, DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens, batch_size,
                        force, extra={**({"chars": list(tokenizer.chars)} if tokenizer.kind == "char" else {}),
                                      "tokenizer": tokenizer.to_dict(), "source_run": str(run_dir)})


def _cmd_export(args) -> int:
    from .export import DEFAULT_MAX_TOKENS

    max_tokens = DEFAULT_MAX_TOKENS if args.max_tokens is None else args.max_tokens
    if max_tokens < 1:
        raise UsageError(f"--max-tokens must be >= 1, got {max_tokens}")
    try:
        path, meta = export_run(args.checkpoint, args.format, args.out, max_tokens, args.batch_size, args.force)
    except ImportError as err:
        raise UsageError(str(err)) from None
    print(path)
    print(meta)
    return 0


# ----------------------------------------------------------------------------- probe
def _add_probe_parser(sub) -> None:
    p = sub.add_parser(
        "probe",
        help="recall probes: train models on a synthetic task (mqar, passkey, distance, selective-copy, listops) "
        "and plot accuracy vs distance / length / state bytes; or context|levels|sequential on trained runs",
        description="lmn probe TASK --model KIND [--model KIND:K=V,...] [...]: see `lmn probe TASK --help` "
        "(lmn.probes.run). The probes of trained runs are studies in research/ (python -m research.context, ...).",
    )
    p.add_argument("task", metavar="TASK", help="mqar, passkey, distance, selective-copy, listops; context, levels, "
                   "sequential")
    p.add_argument("probe_args", nargs=argparse.REMAINDER, help="the probe's own flags (lmn probe TASK --help)")
    p.set_defaults(func=_cmd_probe)


def _cmd_probe(args) -> int:
    from .probes.run import main as probe_main

    return probe_main([args.task, *args.probe_args], prog=f"lmn probe {args.task}")


# ----------------------------------------------------------------------------- main
# Subcommand registrars, in --help order. A `bench` subcommand goes here as
# `_add_bench_parser(sub)`, calling `p.set_defaults(func=_cmd_bench)`.
SUBCOMMANDS = [_add_train_parser, _add_data_parser, _add_generate_parser, _add_plot_parser, _add_bench_parser,
               _add_convert_parser, _add_export_parser, _add_probe_parser]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="lmn", description="Logarithmic Memory Networks: train, sample, plot.")
    parser.add_argument("--version", action="version", version=f"lmn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before a subcommand runs (parsing, imports)
        return _interrupted("lmn")


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from .data import CorpusError
    from .trainer import CheckpointError, CheckpointWarning

    _one_line_warnings(args.command, CheckpointWarning)
    try:
        return args.func(args)
    except (UsageError, ValueError, CorpusError, CheckpointError, FileNotFoundError) as err:
        _fail(args.command, err, EXIT_USAGE)
    except KeyboardInterrupt:
        return _interrupted(f"lmn {args.command}")
    except BrokenPipeError:  # e.g. `lmn generate ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:
        _fail(args.command, err, EXIT_FAILURE)


def _interrupted(prefix: str) -> int:
    """Exit status 130 after Ctrl-C; a second Ctrl-C meanwhile does not become a traceback."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        previous = None
    try:
        print(f"{prefix}: interrupted", file=sys.stderr)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return EXIT_INTERRUPTED


def _one_line_warnings(command: str, category) -> None:
    """Warnings of ``category`` (e.g. a damaged checkpoint passed over) as one line on stderr."""
    import warnings

    _WARN["command"] = command
    previous = warnings.showwarning
    if getattr(previous, "_lmn", False):
        return

    def show(message, cat, *rest, **kw):
        if issubclass(cat, category):
            print(f"lmn {_WARN['command']}: warning: {message}", file=sys.stderr)
        else:
            previous(message, cat, *rest, **kw)

    show._lmn = True
    warnings.showwarning = show


_WARN = {"command": ""}


def _fail(command: str, err: Exception, status: int):
    if os.environ.get("LMN_DEBUG"):
        raise err
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    if status == EXIT_FAILURE:
        message = f"{type(err).__name__}: {message}"
    print(f"lmn {command}: error: {message}", file=sys.stderr)
    raise SystemExit(status)


if __name__ == "__main__":
    sys.exit(main())
