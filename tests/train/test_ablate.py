"""train.ablate: the table's means, and the variants each change exactly one thing."""

from train.ablate import VARIANTS, markdown


def test_means_use_only_tasks_every_row_has_and_retrieval_mean_only_retrieval_tasks():
    rows = {
        "a": {"label": "A", "metrics": {"d/retrieval/t": 0.5, "d/classification/c": 0.1, "d/retrieval/u": None}},
        "b": {"label": "B", "metrics": {"d/retrieval/t": 0.3, "d/classification/c": 0.3, "d/retrieval/u": 0.2}},
    }
    table = markdown(rows)
    assert "| A | 0.500 | 0.100 | n/a | 0.300 | 0.500 |" in table
    assert "| B | 0.300 | 0.300 | 0.200 | 0.300 | 0.300 |" in table
    assert "over the 2 tasks every row can run" in table


def test_each_ablation_differs_from_the_full_model_in_one_switch():
    full = VARIANTS["full-s0"]
    for name in ["no-fusion", "no-fire", "grpo-only", "stage1-s0"]:
        variant = VARIANTS[name]
        changes = [
            variant.build_flags != full.build_flags,
            variant.stage2 != full.stage2,
            variant.stage2_flags != full.stage2_flags,
        ]
        assert sum(changes) == 1 and variant.seed == full.seed, name


def test_log_summary_reads_trainer_log_lines_and_averages_quarters():
    from train.log_summary import logged_steps, summarise

    text = " 1%|#| {'loss': '4.0', 'sft/loss': '8.0'}\r 2%| {'loss': '3.0'} {'loss': '2.0'} {'loss': '1.0'}"
    text += " {'train_runtime': '12.5', 'train_loss': '2.5'}"
    steps = logged_steps(text)
    assert [step["loss"] for step in steps] == [4.0, 3.0, 2.0, 1.0]
    (loss, sft) = summarise(steps, ["loss", "sft/loss", "absent"])
    assert (loss["first"], loss["last"], loss["first_quarter_mean"], loss["last_quarter_mean"]) == (4.0, 1.0, 4.0, 1.0)
    assert sft["logs"] == 1
