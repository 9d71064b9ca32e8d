"""One import path for the code: the model code at the repo root is imported as `moon3.<module>` only (the `moon3/`
package, no module written into `sys.modules`), no file edits sys.path, `train` never imports `benchmarks` (the
benchmark suite may build MOON3 models through `train`, not the other way round), and the stage scripts share helpers
through train/stage_setup.py instead of importing each other."""

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


ROOT_MODULES = ("configuration_moon3", "modeling_moon3", "processing_moon3", "sentence_transformers_moon3")


def code_files(include_tests: bool = True) -> list:
    """Every Python file of the repo: the root model code, `moon3/`, `train/`, `benchmarks/`, `catalog/`, `tests/`."""
    folders = ("moon3", "train", "benchmarks", "catalog") + (("tests",) if include_tests else ())
    files = sorted(REPO_ROOT.glob("*.py")) + [
        path for folder in folders for path in sorted((REPO_ROOT / folder).rglob("*.py"))
    ]
    assert len(files) > 50  # the walk found the code
    return files


def offenders(pattern: str, files) -> list[str]:
    return [str(path.relative_to(REPO_ROOT)) for path in files if re.search(pattern, path.read_text(encoding="utf-8"))]


def test_no_code_file_edits_sys_path():
    assert offenders(r"sys\.path\.(insert|append|extend)|sys\.path\s*\+?=", code_files()) == []


def test_no_code_file_writes_sys_modules():
    # tests may still hide a package for one test with `monkeypatch.setitem(sys.modules, ...)`, which pytest undoes
    pattern = r"sys\.modules\s*\[[^]]*\]\s*=|sys\.modules\.(setdefault|update|pop)|setitem\(\s*sys\.modules"
    assert offenders(pattern, code_files(include_tests=False)) == []


def test_model_code_is_imported_as_moon3_modules_only():
    wrong = {}
    for path in code_files():
        for name in imported_modules(path):
            top, _, rest = name.partition(".")
            if (top == "moon3" and rest not in ("", *ROOT_MODULES)) or top in ROOT_MODULES or "moon3_code" in name:
                wrong.setdefault(str(path.relative_to(REPO_ROOT)), []).append(name)
    assert wrong == {}


def test_root_model_code_imports_itself_relatively():
    for name in ROOT_MODULES:
        names = imported_modules(REPO_ROOT / f"{name}.py")
        assert not {n for n in names if n.split(".")[0] in ("moon3", *ROOT_MODULES, "train", "benchmarks")}, name


def test_each_model_class_has_one_identity():
    """Importing the model through `train`, `benchmarks` and `moon3` loads each root file once, as `moon3.<file>`."""
    code = """
import sys
from pathlib import Path
import benchmarks.encoders, catalog.embedder, train.build_checkpoint, train.data, train.write_st_files
from moon3.modeling_moon3 import Moon3Model
from train.build_checkpoint import register_auto_classes
register_auto_classes()
train.write_st_files.load_st_module()
loaded = sorted(
    f"{name}={Path(module.__file__).name}"
    for name, module in list(sys.modules.items())
    if Path(getattr(module, "__file__", None) or "x").stem.endswith("_moon3")
)
print(" ".join(loaded))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [f"moon3.{name}={name}.py" for name in ROOT_MODULES]


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
