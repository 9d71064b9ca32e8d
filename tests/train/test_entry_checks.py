"""Both training stages refuse to start on rows that would fail during a step, or skip them with --skip_bad_rows."""

from __future__ import annotations

import json

import pytest
from PIL import Image

STAGES = {
    "cold_start": ["--per_device_train_batch_size", "2"],
    "grpo_contrastive": [
        "--per_device_train_batch_size", "4", "--num_generations", "2", "--max_completion_length", "4",
        "--bf16", "false", "--gradient_checkpointing", "false",
    ],
}  # fmt: skip


def rows_with_a_missing_image(tmp_path):
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "red.jpg")
    good = [
        {"query": {"text": f"red shirt {i}"}, "positive": {"id": str(i), "title": f"Red shirt {i}"}} for i in range(4)
    ]
    good[0]["query"] = {"image": str(tmp_path / "red.jpg")}
    bad = {"query": "blue shirt", "positive": {"title": "Blue shirt", "images": [str(tmp_path / "gone.jpg")]}}
    (tmp_path / "a.jsonl").write_text(json.dumps(good[0]) + "\n")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(row) + "\n" for row in [*good[1:], bad]))
    return f"{tmp_path / 'a.jsonl'},{tmp_path / 'b.jsonl'}"


def run_stage(stage, dataset, output_dir, *extra):
    import importlib

    module = importlib.import_module(f"train.{stage}")
    argv = [
        "--dataset_name", dataset, "--random_model", "tiny", "--output_dir", str(output_dir), "--max_steps", "1",
        "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no", "--learning_rate", "1e-3",
        *STAGES[stage], *extra,
    ]  # fmt: skip
    return module.main(argv)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_training_refuses_rows_that_would_fail_in_a_step_naming_file_row_and_field(stage, tmp_path):
    dataset = rows_with_a_missing_image(tmp_path)
    with pytest.raises(ValueError, match=r"b.jsonl row 3 \(line 4\): 'positive'.images\[0\]: .*gone.jpg' does not"):
        run_stage(stage, dataset, tmp_path / "run")
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_skip_bad_rows_trains_on_the_rest_and_lists_the_rejects(stage, tmp_path):
    dataset = rows_with_a_missing_image(tmp_path)
    run_stage(stage, dataset, tmp_path / "run", "--skip_bad_rows", "true")
    assert (tmp_path / "run" / "model.safetensors").is_file()
    rejects = [json.loads(line) for line in (tmp_path / "run" / "rejected_rows.jsonl").read_text().splitlines()]
    assert [(r["file"], r["row"], r["line"]) for r in rejects] == [(str(tmp_path / "b.jsonl"), 3, 4)]
