"""Checkpoints: a resumed stage 2 equals the uninterrupted run, checkpoint folders load with AutoModel, a failed save
is never resumed from, and the training process stops when its launcher is killed."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import build_tiny
from tests.train.test_training import grpo_trainer, stage1_trainer
from train.checkpointing import (
    COMPLETE_MARKER,
    EpochSeededRepeatSampler,
    last_complete_checkpoint,
    resolve_resume_checkpoint,
)
from train.data import synthetic_rows

REPO = Path(__file__).resolve().parents[2]


def weights(model) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def test_epoch_seeded_sampler_gives_trls_orders_from_any_starting_epoch():
    from trl.trainer.utils import RepeatSampler

    settings = dict(data_source=range(6), mini_repeat_count=2, batch_size=3, repeat_count=1, shuffle=True, seed=0)
    trl = RepeatSampler(**settings)
    trl_orders = [list(trl) for _ in range(3)]  # TRL's generator advances epoch by epoch
    assert trl_orders[0] != trl_orders[2]  # so a resume that restarts it at epoch 0 sees another order
    ours = EpochSeededRepeatSampler(**settings)
    assert [list(ours) for _ in range(3)] == trl_orders  # the same orders as TRL's in an uninterrupted run
    resumed = EpochSeededRepeatSampler(**settings)
    resumed.set_epoch(2)
    assert list(resumed) == trl_orders[2]


def uninterrupted_and_resumed(make_trainer, tiny_tokenizer, rows, root, settings):
    """(weights after an uninterrupted run, weights after a fresh run resumed from its checkpoint-3, that trainer):
    both start from the same tiny model, `make_trainer(model, processor, rows, output_dir, **settings)`."""
    model, processor = build_tiny(tiny_tokenizer)
    make_trainer(model, processor, rows, root / "full", **settings).train()
    full = weights(model)
    model, processor = build_tiny(tiny_tokenizer)
    trainer = make_trainer(model, processor, rows, root / "resumed", **settings)
    trainer.train(resume_from_checkpoint=str(root / "full" / "checkpoint-3"))
    return full, weights(model), trainer


@pytest.fixture(scope="module")
def stage2_runs(tiny_tokenizer, tmp_path_factory):
    """Stage 2 on 4 rows (2 steps per epoch): 4 steps uninterrupted, saving at step 3 (inside epoch 1), and a fresh
    run resumed from checkpoint-3."""
    rows = synthetic_rows(4)
    root = tmp_path_factory.mktemp("stage2-resume")
    settings = dict(max_steps=4, save_strategy="steps", save_steps=3, per_device_train_batch_size=4, num_generations=2)
    full, resumed, resumed_trainer = uninterrupted_and_resumed(grpo_trainer, tiny_tokenizer, rows, root, settings)
    return full, resumed, resumed_trainer, root


@pytest.mark.slow
def test_stage2_resumed_in_a_later_epoch_equals_the_uninterrupted_run(stage2_runs):
    full, resumed, trainer, _ = stage2_runs
    assert trainer.state.global_step == 4 and trainer.state.epoch == 2
    assert full.keys() == resumed.keys()
    for name in full:
        assert torch.equal(full[name], resumed[name]), name  # bitwise


@pytest.mark.slow
def test_checkpoint_folders_load_with_automodel_and_sentence_transformers(stage2_runs):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    *_, root = stage2_runs
    folder = root / "full" / "checkpoint-3"
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModel"].endswith("modeling_moon3.Moon3Model")
    assert {"modeling_moon3.py", "configuration_moon3.py", "processing_moon3.py", COMPLETE_MARKER} <= {
        path.name for path in folder.iterdir()
    }
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__name__ == "Moon3Model"
    assert SentenceTransformer(str(folder), trust_remote_code=True, device="cpu").encode(["red shirt"]).shape[0] == 1


class FileSizeLimitFrom:
    """A `TrainerCallback` that, from step `step` on, caps the size of files this process writes at `limit` bytes
    (RLIMIT_FSIZE: writes beyond it fail with EFBIG, 'File too large', as on a full disk)."""

    def __init__(self, step: int, limit: int):
        from transformers import TrainerCallback

        self.step, self.limit = step, limit
        self.callback = type("Limit", (TrainerCallback,), {"on_step_end": self.on_step_end})()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


@pytest.mark.slow
def test_a_failed_save_leaves_no_folder_that_resume_picks(tiny_tokenizer, tmp_path):
    rows = synthetic_rows(4)
    settings = dict(max_steps=2, save_strategy="steps", save_steps=1)
    model, processor = build_tiny(tiny_tokenizer)
    trainer = stage1_trainer(model, processor, rows, tmp_path, **settings)
    probe = tmp_path / "probe"
    trainer.save_model(str(probe))  # how large the weights are: the cap lets them through and stops the optimizer
    weights_size = (probe / "model.safetensors").stat().st_size
    limit = FileSizeLimitFrom(step=2, limit=weights_size + 4096)
    trainer.add_callback(limit.callback)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        with pytest.raises(Exception) as error:
            trainer.train()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    # torch's writer reports the short write ("unexpected pos"); the weights were written, the optimizer state was not
    assert isinstance(error.value, (OSError, RuntimeError)), repr(error.value)
    assert "_save_optimizer_and_scheduler" in [entry.name for entry in error.traceback], repr(error.value)
    assert not (tmp_path / "checkpoint-2").exists()  # the partial folder was removed
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-1")

    model, processor = build_tiny(tiny_tokenizer)
    resumed = stage1_trainer(model, processor, rows, tmp_path, **settings)
    resumed.train(resume_from_checkpoint=True)  # takes checkpoint-1 and finishes
    assert resumed.state.global_step == 2 and (tmp_path / "checkpoint-2" / COMPLETE_MARKER).is_file()


def test_a_folder_whose_save_did_not_finish_is_never_resumed_from(tmp_path):
    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-2" / COMPLETE_MARKER).write_text("{}")  # checkpoint-4 was cut short (killed mid-save)
    assert resolve_resume_checkpoint(True, str(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert resolve_resume_checkpoint("last", str(tmp_path)) == str(tmp_path / "checkpoint-2")  # the CLI's spelling
    with pytest.raises(ValueError, match=r"checkpoint-4' is incomplete .* Resume from .*checkpoint-2"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-4"), str(tmp_path))
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        resolve_resume_checkpoint(True, str(tmp_path / "empty"))


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("config", ["cpu_1proc.yaml", "cpu_2proc.yaml"])
def test_killing_the_launcher_stops_training(tmp_path, config):
    """`kill -9` of `accelerate launch` (the launcher only, not its process group): its training processes stop."""
    from tests.train.test_launch import ACCELERATE, free_port

    command = [
        ACCELERATE, "launch", "--config_file", f"train/accelerate/{config}", "--main_process_port", str(free_port()),
        "-m", "train.grpo_contrastive", "--config", "train/recipes/tiny_grpo.yaml",
        "--output_dir", str(tmp_path), "--max_steps", "1000", "--save_steps", "2",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    launcher = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 1800  # a hang guard only, not a speed limit (seconds on a quiet machine)
        while not (tmp_path / "checkpoint-2" / COMPLETE_MARKER).is_file():  # training is under way
            assert launcher.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint-2 within 30 min: the run hangs"
            time.sleep(0.2)
        workers = children_of(launcher.pid)
        assert workers, "the launcher has no child process"
        launcher.kill()  # SIGKILL to the launcher alone
        launcher.wait()
        deadline = time.monotonic() + 300  # the kernel's SIGKILL lands at once; a hang guard only
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(pid) for pid in workers), "training kept running after its launcher was killed"
    finally:
        for pid in workers:  # never leave a stray trainer behind, whatever happened
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()


@pytest.mark.slow
def test_stage1_resumed_in_a_later_epoch_equals_the_uninterrupted_run(tiny_tokenizer, tmp_path):
    rows = synthetic_rows(4)
    settings = dict(max_steps=4, save_strategy="steps", save_steps=3, per_device_train_batch_size=2)
    full, resumed, trainer = uninterrupted_and_resumed(stage1_trainer, tiny_tokenizer, rows, tmp_path, settings)
    assert trainer.state.global_step == 4 and trainer.state.epoch == 2
    for name, value in resumed.items():
        assert torch.equal(full[name], value), name
