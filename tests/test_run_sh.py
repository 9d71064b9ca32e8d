"""`bash run.sh` on a fresh clone: builds its own venv offline from a wheel cache and reproduces the README row."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FASHION_DIR, REPO_ROOT

# Wheels for every requirement, filled once from the package index (or pip's cache) and reused by later runs.
WHEELHOUSE = Path(os.environ.get("MOON3_WHEELHOUSE", Path.home() / ".cache" / "moon3-wheelhouse"))


def fill_wheelhouse(requirements: Path) -> None:
    """Download every wheel run.sh will need, so the run itself can use `--no-index` (no network)."""
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    download = [sys.executable, "-m", "pip", "download", "-q", "-d", str(WHEELHOUSE)]
    for spec in (["torch==2.13.0"], ["-r", str(requirements), "pip"]):
        result = subprocess.run(download + spec, capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, f"could not fill the wheel cache {WHEELHOUSE}:\n{result.stderr[-3000:]}"


def fresh_clone(tmp_path: Path) -> Path:
    """Clone the committed repo next to a `shared` link, the layout run.sh expects for ../shared/data."""
    (tmp_path / "shared").symlink_to(REPO_ROOT.parent / "shared", target_is_directory=True)
    clone = tmp_path / "moon3"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(clone)], check=True, timeout=300)
    return clone


def run_sh(clone: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "PYTHON", "PIP_"))}
    env.update(
        HF_HUB_OFFLINE="1",
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(WHEELHOUSE),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PATH=os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p),
    )
    return subprocess.run(
        ["bash", str(clone / "run.sh")], cwd=cwd, env=env, capture_output=True, text=True, timeout=2400
    )


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="needs ../shared/data/fashion-product-images")
def test_run_sh_on_a_fresh_clone_reproduces_the_readme_row_and_reuses_everything_on_rerun(tmp_path):
    fill_wheelhouse(REPO_ROOT / "requirements.txt")
    clone = fresh_clone(tmp_path)

    first = run_sh(clone, cwd=tmp_path)  # not the repo root: run.sh must find its own files
    output = first.stdout + first.stderr
    assert first.returncode == 0, output[-5000:]
    assert "created" in output and (clone / ".venv" / "bin" / "python").is_file()
    assert "Reproduced:" in output
    assert "5/5 Catalogue search" in output and "+ photo query: " in output  # the catalogue part ran
    assert first.stdout.rstrip().endswith("RESULT: the shipped checkpoint reproduces its README row")

    second = run_sh(clone, cwd=clone / "tests")
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-5000:]
    assert "reusing the existing virtual environment" in output
    assert "requirements.txt unchanged since the last install" in output
    assert "RESULT: the shipped checkpoint reproduces its README row" in output
