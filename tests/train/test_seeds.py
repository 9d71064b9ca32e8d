"""train.seeds: mean and spread over seeds per (stage, mode) row, and the commands each seed runs."""

import pytest

from train.seeds import main, markdown, summarise


def test_mean_and_spread_over_seeds_with_the_retrieval_mean_as_a_task():
    per_seed = {
        ("stage1", "direct"): [
            {"d/retrieval/t": 0.5, "d/classification/c": 0.1},
            {"d/retrieval/t": 0.3, "d/classification/c": 0.4},
            {"d/retrieval/t": 0.4, "d/classification/c": None},
        ]
    }
    row = summarise(per_seed)["stage1/direct"]
    assert row["seeds"] == 3
    assert row["mean"]["d/retrieval/t"] == pytest.approx(0.4)
    assert row["spread"]["d/retrieval/t"] == pytest.approx(0.2)
    assert row["mean"]["retrieval mean"] == pytest.approx(0.4)
    assert "d/classification/c" not in row["mean"]  # a task a seed could not run is left out, not averaged over two
    assert "| stage1/direct | 3 | 0.400 ± 0.200 | 0.400 ± 0.200 |" in markdown(summarise(per_seed))


def test_dry_run_trains_each_seed_with_both_recipes_and_its_own_seed(tmp_path, caplog):
    caplog.set_level("INFO")
    main(["--out", str(tmp_path), "--seeds", "3", "4", "--dry-run", "--stage1-args", "--max_steps 2"])
    commands = [r.getMessage() for r in caplog.records if r.getMessage().startswith("$ ")]
    stage1 = [c for c in commands if "train.cold_start" in c]
    stage2 = [c for c in commands if "train.grpo_contrastive" in c]
    assert len(stage1) == len(stage2) == 2
    assert "--seed 3" in stage1[0] and "--seed 4" in stage1[1] and "--max_steps 2" in stage1[0]
    assert f"{tmp_path}/s4/stage1" in stage2[1]  # stage 2 starts from the same seed's stage 1
    assert not (tmp_path / "table.md").exists()
