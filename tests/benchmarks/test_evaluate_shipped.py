"""benchmarks.evaluate_shipped: the comparison with the README row, and the reference file it reads."""

import json

from benchmarks.evaluate_shipped import REFERENCE, comparison_table


def _results(value):
    return {
        "tasks": {"fashion/retrieval/text2product": {"primary_metric": "ndcg@10"}},
        "metrics": {"fashion/retrieval/text2product/ndcg@10": value},
    }


def test_comparison_reports_the_largest_difference_from_the_reference():
    table, largest = comparison_table(_results(0.25), {"fashion/retrieval/text2product": 0.2})
    assert "| fashion/retrieval/text2product (ndcg@10) | 0.250 | 0.200 | +0.050 |" in table
    assert abs(largest - 0.05) < 1e-9


def test_reference_file_holds_the_direct_row_with_data_hashes():
    reference = json.loads(REFERENCE.read_text())["direct"]
    assert set(reference["data_hashes"]) == {"fashion", "abt-buy"}
    assert all(0.0 <= value <= 1.0 for value in reference["metrics"].values())


def test_write_reference_replaces_one_mode_and_keeps_the_other(tmp_path):
    from benchmarks.evaluate_shipped import write_reference

    path = tmp_path / "reference.json"
    path.write_text(json.dumps({"direct": {"metrics": {"old": 0.1}}, "reason": {"metrics": {"kept": 0.2}}}))
    results = _results(0.123456) | {"data": [{"name": "fashion", "hash": "abc"}]}
    write_reference(results, "direct", path)
    reference = json.loads(path.read_text())
    assert reference["direct"]["metrics"] == {"fashion/retrieval/text2product": 0.1235}
    assert reference["direct"]["data_hashes"] == {"fashion": "abc"}
    assert "--mode reason" not in reference["direct"]["command"]
    assert reference["reason"] == {"metrics": {"kept": 0.2}}
