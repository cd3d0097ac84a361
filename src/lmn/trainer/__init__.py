"""Training and evaluation of any registered model kind (:mod:`lmn.kinds`) on any task
(:mod:`lmn.tasks`); by default the paper's Table 1 protocol for LMN.

=====================  ================================================================
module                 what it holds
=====================  ================================================================
``config``             :class:`TrainConfig`, the presets, what may change on resume
``models``             a kind's config resolved against the task, building the model
``rundir``             the run directory's files: checkpoints, metrics, loading a run
``lock``               one trainer per run directory (``lmn-run.lock``)
``distributed``        data-parallel setup (torchrun) and its collectives
``evaluation``         the periodic estimate and the whole-split evaluation
``loop``               :func:`train`: setup, the loop, the finish
``progress``           the progress line, the deferred Ctrl-C, machine info
``loggers``            ``--log tensorboard`` / ``wandb`` beside metrics.jsonl (imported on use)
=====================  ================================================================

``import lmn`` does not import this package (it needs ``safetensors`` for checkpoints).
"""

from .config import DTYPES, PRESETS, RESUMABLE_FIELDS, TrainConfig, preset_config
from .distributed import Dist, init_distributed
from .evaluation import estimate_loss, evaluate_whole, eval_seed
from .loop import train
from .models import (build_model, enable_gradient_checkpointing, normalize_model_config, num_parameters,
                     resolve_model_config)
from .progress import Progress, machine_info
from .rundir import (CHECKPOINT_FORMAT, CHECKPOINTS_DIR, CONFIG_FILE, FINAL_FILE, METRICS_FILE, MODEL_FILE,
                     RUN_FILES, RUN_MANIFEST, STATE_FILE, TOKENIZER_FILE, Checkpoint, CheckpointError,
                     CheckpointWarning, DamagedCheckpoint, list_checkpoints, load_checkpoint, load_run,
                     load_trainer_state, newest_checkpoint, prepare_run_dir, read_checkpoint_metadata, read_metrics,
                     save_checkpoint, saved_config)

__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINTS_DIR", "RUN_MANIFEST", "Checkpoint", "CheckpointWarning", "DamagedCheckpoint",
    "list_checkpoints", "newest_checkpoint", "CONFIG_FILE", "DTYPES", "FINAL_FILE", "METRICS_FILE", "MODEL_FILE", "PRESETS",
    "RESUMABLE_FIELDS", "RUN_FILES", "STATE_FILE", "TOKENIZER_FILE", "CheckpointError", "Dist", "Progress",
    "TrainConfig", "build_model", "enable_gradient_checkpointing", "estimate_loss", "eval_seed", "evaluate_whole",
    "init_distributed", "load_checkpoint", "load_run", "load_trainer_state", "machine_info",
    "normalize_model_config", "num_parameters", "prepare_run_dir", "preset_config", "read_checkpoint_metadata",
    "read_metrics", "resolve_model_config", "save_checkpoint", "saved_config", "train",
]
