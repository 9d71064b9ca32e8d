"""Results → Markdown tables and PNG plots (Recall@K curves, per-task primary-metric bars); all writes atomic.

Example:
    >>> print(markdown_table({"model": {"name": "m"}, "tasks": {}, "metrics": {}}).splitlines()[0])
    # Results: m
"""

from __future__ import annotations

import io
import re
from pathlib import Path

from .io_utils import atomic_write_bytes, atomic_write_text

TABLE_METRICS = {
    "retrieval": ("recall@1", "recall@5", "recall@10", "recall_uncapped@10", "mrr", "ndcg@10", "map"),
    "classification": ("accuracy", "macro_f1"),
    "attributes": ("accuracy", "macro_f1"),
}


def fmt(value) -> str:
    """A metric as text: 3 decimals, or n/a for None (the model cannot do the task)."""
    return "n/a" if value is None else f"{value:.3f}"


def markdown_table(results: dict) -> str:
    """One Markdown table per task family: a row per task, a column per metric."""
    lines = [f"# Results: {results['model']['name']}", ""]
    if results.get("command"):
        lines += [f"`{results['command']}`", ""]
    for family, metric_names in TABLE_METRICS.items():
        tasks = [(name, info) for name, info in results["tasks"].items() if info["family"] == family]
        if not tasks:
            continue
        lines += [
            f"## {family}",
            "",
            "| task | " + " | ".join(metric_names) + " |",
            "|---|" + "---:|" * len(metric_names),
        ]
        for name, _ in tasks:
            values = [fmt(results["metrics"].get(f"{name}/{m}")) for m in metric_names]
            lines.append(f"| {name} | " + " | ".join(values) + " |")
        lines.append("")
    return "\n".join(lines)


def _save_figure(figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def plot_recall_curves(results: dict, path: Path) -> Path | None:
    """Recall@K against K for every retrieval task the model could run; None when there is none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for name, info in results["tasks"].items():
        points = sorted(
            (int(m.group(1)), v)
            for key, v in results["metrics"].items()
            if key.startswith(name + "/") and (m := re.search(r"/recall@(\d+)$", key)) and v is not None
        )
        if info["family"] == "retrieval" and points:
            axis.plot([k for k, _ in points], [v for _, v in points], marker="o", label=name)
            drawn += 1
    if drawn:
        axis.set(
            xscale="log", xlabel="K", ylabel="Recall@K", ylim=(0, 1.02), title=f"Recall@K: {results['model']['name']}"
        )
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
        _save_figure(figure, path)
    plt.close(figure)
    return path if drawn else None


def plot_primary_bars(results: dict, path: Path) -> Path:
    """Horizontal bars of each task's primary metric; tasks the model cannot do are labelled n/a."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["tasks"])
    values = [results["metrics"].get(f"{n}/{results['tasks'][n]['primary_metric']}") for n in names]
    figure, axis = plt.subplots(figsize=(8, 0.3 * len(names) + 1.2))
    axis.barh(range(len(names)), [v or 0.0 for v in values], color=["C0" if v is not None else "0.8" for v in values])
    for i, v in enumerate(values):
        label = "n/a" if v is None else f"{v:.3f}"
        axis.text((v or 0.0) + 0.01, i, label, va="center", fontsize=7)
    axis.set_yticks(range(len(names)), [f"{n} ({results['tasks'][n]['primary_metric']})" for n in names], fontsize=7)
    axis.invert_yaxis()
    axis.set(xlim=(0, 1.1), title=f"Primary metric per task: {results['model']['name']}")
    _save_figure(figure, path)
    plt.close(figure)
    return path


def write_report(results: dict, out: Path) -> dict[str, Path]:
    """results.md, recall_at_k.png and primary_metrics.png in `out` (results.json is written by the caller)."""
    out = Path(out)
    files = {
        "markdown": atomic_write_text(out / "results.md", markdown_table(results) + "\n"),
        "bars": plot_primary_bars(results, out / "primary_metrics.png"),
    }
    curves = plot_recall_curves(results, out / "recall_at_k.png")
    if curves:
        files["curves"] = curves
    return files
