"""End-to-end `accelerate launch` of the tiny recipes (one and two processes) and kill/resume. Slow: subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
# Only a guard against a hung launch (a deadlocked gloo group), far above any machine's run time; no assertion
# here depends on how fast the machine is.
HANG_GUARD_S = 1800


def free_port() -> int:
    """A port nobody listens on now: back-to-back gloo runs on the config's fixed port can hit TIME_WAIT."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(
    config: str, module: str, recipe: str, *extra: str, timeout: int = HANG_GUARD_S
) -> subprocess.CompletedProcess:
    command = [
        ACCELERATE,
        "launch",
        "--config_file",
        f"train/accelerate/{config}",
        "--main_process_port",
        str(free_port()),
        "-m",
        module,
        "--config",
        recipe,
        *extra,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def final_step(output_dir: Path) -> int:
    states = sorted(output_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    return json.loads(states[-1].read_text())["global_step"]


@pytest.mark.slow
@pytest.mark.parametrize("config", ["cpu_1proc.yaml", "cpu_2proc.yaml"])
def test_tiny_grpo_recipe_runs(config, tmp_path):
    launch(
        config,
        "train.grpo_contrastive",
        "train/recipes/tiny_grpo.yaml",
        "--output_dir",
        str(tmp_path),
        "--max_steps",
        "4",
    )
    assert final_step(tmp_path) == 4 and (tmp_path / "model.safetensors").is_file()


@pytest.mark.slow
def test_tiny_cold_start_recipe_runs_on_two_processes(tmp_path):
    """Two processes with gradient caching and the reasoned InfoNCE term (documents gathered across processes)."""
    launch(
        "cpu_2proc.yaml",
        "train.cold_start",
        "train/recipes/tiny_cold_start.yaml",
        "--output_dir",
        str(tmp_path),
        "--max_steps",
        "6",
        "--reasoned_contrastive_weight",
        "0.5",
        "--reasoning_noise",
        "0.3",
    )
    assert final_step(tmp_path) == 6
    logged = json.loads(sorted(tmp_path.glob("checkpoint-*/trainer_state.json"))[-1].read_text())["log_history"]
    assert any("contrastive/reasoned_loss" in entry for entry in logged)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_final_step(tmp_path):
    """SIGKILL a run once its step-4 checkpoint exists, resume from the last checkpoint, reach step 8."""
    import signal
    import time

    from moon3.modeling_moon3 import Moon3Model
    from train.checkpointing import COMPLETE_MARKER, last_complete_checkpoint

    recipe = ["--output_dir", str(tmp_path), "--max_steps", "8", "--save_steps", "4"]
    command = [
        ACCELERATE,
        "launch",
        "--config_file",
        "train/accelerate/cpu_1proc.yaml",
        "-m",
        "train.grpo_contrastive",
        "--config",
        "train/recipes/tiny_grpo.yaml",
        *recipe,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        while not (tmp_path / "checkpoint-4" / COMPLETE_MARKER).is_file():  # its save finished
            assert run.poll() is None, "the run ended before it wrote checkpoint-4"
            time.sleep(0.05)
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # the launcher and its training process, wherever they are
        run.wait()
    # On a fast machine the run may have passed step 4 before the kill landed: drop what it wrote after
    # checkpoint-4, which is what a kill at that moment leaves, so the resume below starts from step 4 either way.
    for later in tmp_path.glob("checkpoint-*"):
        if int(later.name.split("-")[1]) > 4:
            shutil.rmtree(later)
    for final in ("model.safetensors", "config.json"):
        (tmp_path / final).unlink(missing_ok=True)

    last = last_complete_checkpoint(tmp_path)  # a checkpoint-8 cut short by the kill is never taken
    assert last is not None and int(last.rsplit("-", 1)[1]) == 4
    launch(
        "cpu_1proc.yaml",
        "train.grpo_contrastive",
        "train/recipes/tiny_grpo.yaml",
        *recipe,
        "--resume_from_checkpoint",
        last,
    )
    assert final_step(tmp_path) == 8
    Moon3Model.from_pretrained(tmp_path / "checkpoint-8")  # the final checkpoint loads
