"""Checkpoints both trainers can resume from and load: complete-or-ignored saves, loadable folders, exact resumes.

- Every `checkpoint-N` is a loadable MOON3 folder: `auto_map` in its config, the code files beside the weights, the
  sentence-transformers files (`AutoModel.from_pretrained(folder, trust_remote_code=True)` works on it).
- A save that fails (disk full, I/O error) removes its partial folder and re-raises; a save cut short by a kill leaves
  a folder without the completion marker `moon3_checkpoint_complete.json` (written last, atomically). Resuming
  (`resume_from_checkpoint=True` or a path) only takes folders with the marker, so an incomplete one is never picked.
- Stage 2's prompt sampler draws each epoch's order from (seed, epoch) (`EpochSeededRepeatSampler`): a run resumed in
  a later epoch sees the same prompt order as the uninterrupted run, and TRL's generation counter is restored.
- `die_with_parent`: a training process started by `accelerate launch` stops when the launcher dies (`kill -9`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl.trainer.utils import RepeatSampler

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "moon3_checkpoint_complete.json"
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def is_complete_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether `folder` is a checkpoint whose save finished (it holds the completion marker)."""
    return (Path(folder) / COMPLETE_MARKER).is_file()


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The highest-numbered complete `checkpoint-N` in `output_dir` (incomplete ones are skipped with a warning)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    numbered = sorted(
        ((int(match.group(1)), path) for path in folder.iterdir() if (match := _CHECKPOINT_NAME.match(path.name))),
        reverse=True,
    )
    for _, path in numbered:
        if path.is_dir() and is_complete_checkpoint(path):
            return str(path)
        logger.warning("skipping %s: its save did not finish (no %s)", path, COMPLETE_MARKER)
    return None


def resolve_resume_checkpoint(resume_from_checkpoint, output_dir: str) -> str | None:
    """`resume_from_checkpoint` as `Trainer.train` takes it (None/False, True or "last" = the last one, or a path) -> a complete
    checkpoint folder or None. Raises `ValueError` for a folder whose save did not finish, or when True finds none."""
    if resume_from_checkpoint in (None, False):
        return None
    if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() in ("true", "last"):
        if not Path(resume_from_checkpoint).exists():  # `--resume_from_checkpoint last` on the command line
            resume_from_checkpoint = True
    if resume_from_checkpoint is True:
        found = last_complete_checkpoint(output_dir)
        if found is None:
            raise ValueError(f"resume_from_checkpoint=True but {output_dir!r} holds no complete checkpoint-N folder.")
        return found
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise ValueError(f"resume_from_checkpoint: {str(path)!r} is not a folder.")
    if not is_complete_checkpoint(path):
        earlier = last_complete_checkpoint(path.parent)
        raise ValueError(
            f"resume_from_checkpoint: {str(path)!r} is incomplete (its save did not finish: no {COMPLETE_MARKER}). "
            + (f"Resume from {earlier!r} instead" if earlier else "No complete checkpoint is next to it")
            + ", or delete it."
        )
    return str(path)


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's `RepeatSampler` whose shuffle for epoch e is the (e+1)-th permutation drawn from `seed`, whichever epoch
    the iteration starts in: the same orders as TRL's (one generator advanced epoch by epoch), but a run resumed in a
    later epoch no longer restarts the generator at epoch 0. `Trainer` calls `set_epoch` before each epoch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epoch = 0
        self._initial_state = self.generator.get_state() if self.shuffle else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            self.generator.set_state(self._initial_state)
            for _ in range(self.epoch):  # the permutations of the epochs before this one
                torch.randperm(self.num_samples, generator=self.generator)
        self.epoch += 1  # without set_epoch, the next iteration is the next epoch
        yield from super().__iter__()


class CheckpointMixin:
    """For `transformers.Trainer` subclasses: complete-or-removed `checkpoint-N` saves that load with AutoModel, and a
    resume that only takes complete ones. Subclasses may add state with `_extra_checkpoint_state` /
    `_restore_extra_checkpoint_state` (written by the main process to `moon3_trainer_state.json`)."""

    EXTRA_STATE = "moon3_trainer_state.json"

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        resume_from_checkpoint = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        from train.build_checkpoint import register_auto_classes

        register_auto_classes()  # save_pretrained writes auto_map and copies the code files into the folder
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save and folder.exists():  # left by an earlier, failed or killed run: never mixed in
            shutil.rmtree(folder)
        self.accelerator.wait_for_everyone()
        try:
            super()._save_checkpoint(model, trial)
            if self.args.should_save:
                self._write_loadable_files(folder)
        except BaseException:
            if self.args.should_save and folder.exists():
                logger.error("saving %s failed; removing the partial folder", folder)
                shutil.rmtree(folder, ignore_errors=True)
            raise
        self.accelerator.wait_for_everyone()  # every process wrote its RNG state
        if self.args.should_save:
            _atomic_write_json(folder / COMPLETE_MARKER, {"global_step": self.state.global_step})

    def _write_loadable_files(self, folder: Path) -> None:
        from train.write_st_files import write_st_files

        config_path = folder / "config.json"
        config = json.loads(config_path.read_text())
        config.setdefault("auto_map", {}).setdefault("AutoModelForImageTextToText", "modeling_moon3.Moon3Model")
        _atomic_write_json(config_path, config)
        processor = self.processing_class
        if hasattr(processor, "product_instruction"):
            write_st_files(folder, processor.product_instruction, processor.query_instruction)
        _atomic_write_json(folder / self.EXTRA_STATE, self._extra_checkpoint_state())

    def _extra_checkpoint_state(self) -> dict:
        return {}

    def _restore_extra_checkpoint_state(self, state: dict) -> None:
        pass

    def _load_rng_state(self, checkpoint) -> None:
        super()._load_rng_state(checkpoint)  # called once per resume, right before the first resumed step
        if checkpoint is not None and (Path(checkpoint) / self.EXTRA_STATE).is_file():
            self._restore_extra_checkpoint_state(json.loads((Path(checkpoint) / self.EXTRA_STATE).read_text()))


def _atomic_write_json(path: Path, obj) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    with staging.open("w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)


def die_with_parent() -> None:
    """Under `accelerate launch` (or torchrun), end this process when its launcher dies, even by SIGKILL (Linux).

    `kill -9` of the launcher cannot be caught by it, so without this its training processes keep running (and
    writing checkpoints). Linux's `PR_SET_PDEATHSIG` has the kernel send SIGKILL to this process when its parent
    exits. Elsewhere nothing is set; stop the whole process group instead (`kill -9 -- -<launcher pid>`).
    A process started from a shell (no launcher variables) is left alone, so `nohup python train/...` keeps running.
    """
    import signal
    import sys

    if not any(name in os.environ for name in ("ACCELERATE_USE_CPU", "TORCHELASTIC_RUN_ID", "LOCAL_RANK")):
        return
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
        logger.warning("could not ask to stop with the launcher (prctl errno %d)", ctypes.get_errno())
        return
    if os.getppid() != parent or parent == 1:  # the launcher died before prctl took effect
        os._exit(1)
