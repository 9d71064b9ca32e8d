"""One import path for the code: no script edits sys.path, `train` never imports `benchmarks` (the benchmark suite
may build MOON3 models through `train`, not the other way round), and the stage scripts share helpers through
train/stage_setup.py instead of importing each other."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

from tests.conftest import REPO_ROOT


def imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_code_file_edits_sys_path():
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for folder in ("train", "benchmarks")
        for path in (REPO_ROOT / folder).rglob("*.py")
        if re.search(r"sys\.path\.(insert|append|extend)|sys\.path\s*\+?=", path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_train_never_imports_benchmarks():
    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted(m for m in imported_modules(path) if m.split(".")[0] == "benchmarks")
        for path in (REPO_ROOT / "train").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_stage_scripts_do_not_import_each_other():
    for script, other in (("cold_start", "grpo_contrastive"), ("grpo_contrastive", "cold_start")):
        assert f"train.{other}" not in imported_modules(REPO_ROOT / "train" / f"{script}.py")
    for user in ("train/grpo_contrastive.py", "benchmarks/speed_grpo.py"):
        assert "train.cold_start" not in imported_modules(REPO_ROOT / user), user


def test_a_stage_script_run_as_a_file_says_how_to_run_it():
    result = subprocess.run(
        [sys.executable, "train/grpo_contrastive.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 1 and "-m train.grpo_contrastive" in result.stderr
