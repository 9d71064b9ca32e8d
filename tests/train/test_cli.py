"""The training scripts' `--help`: what the script does, an example launch, --config, MOON3 options before TRL's."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
    ("module", "moon3_option"),
    [("train.cold_start", "--embedding_chunk_size"), ("train.grpo_contrastive", "--contrastive_weight")],
)
def test_short_help_leads_with_the_purpose_an_example_and_the_moon3_options(module, moon3_option, capsys):
    script = importlib.import_module(module)
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith("usage: accelerate launch") and "--config RECIPE.yaml" in lines[0]
    assert lines[2].startswith("Stage ")  # what it does, right after the usage line
    assert "Example:" in text and f"-m {module} --config train/recipes/tiny_" in text
    assert text.index("MOON3 options") < text.index(moon3_option) < text.index("common TRL / transformers options")
    assert text.index("--dataset_name") < text.index("--model_name_or_path")
    assert "--help-all" in text and len(lines) < 200


def test_help_all_is_the_full_trl_list(capsys):
    script = importlib.import_module("train.grpo_contrastive")
    with pytest.raises(SystemExit):
        script.parse_args(["--help-all"])
    text = capsys.readouterr().out
    assert "--num_generations" in text and "--contrastive_weight" in text and len(text.splitlines()) > 500


def test_options_still_parse_after_the_help_wrapper(tmp_path):
    script = importlib.import_module("train.cold_start")
    script_args, training_args, _ = script.parse_args(
        ["--config", "train/recipes/tiny_cold_start.yaml", "--output_dir", str(tmp_path), "--max_steps", "3"]
    )
    assert training_args.max_steps == 3 and training_args.output_dir == str(tmp_path)
    assert script_args.random_model == "tiny"
