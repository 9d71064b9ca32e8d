"""The README's examples run as written, and .ci/run runs the README's test command."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import FASHION_DIR, REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def readme_block(marker: str) -> str:
    match = re.search(rf"<!-- {re.escape(marker)} -->\s*```(?:python|bash)\n(.*?)```", README, re.S)
    assert match, f"README.md has no block after <!-- {marker} -->"
    return match.group(1)


def run_readme_example(marker: str) -> str:
    """Run a README Python block in a fresh offline process from the repo root; return what it printed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", readme_block(marker)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,  # a hang guard only, not a speed limit
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


needs_fashion_data = pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="needs ../shared/data/fashion-product-images")


@pytest.mark.slow
@needs_fashion_data
def test_quickstart_runs_against_the_root_checkpoint():
    assert "torch.Size([2, 2]) torch.Size([2, 256])" in run_readme_example("readme-example: quickstart")


def test_ci_script_runs_the_readme_test_command():
    """.ci/run runs what .ci/readme_test_command prints; that is the README's block, and it is the fast suite."""
    command = readme_block("ci-test-command").strip()
    extracted = subprocess.run(
        [str(REPO_ROOT / ".ci" / "readme_test_command"), "README.md"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert extracted == command
    assert '-m "not slow"' in command
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "$(.ci/readme_test_command README.md)" in ci and "-m slow" in ci


def test_readme_test_command_extraction_fails_loudly_without_the_marker(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no test command here\n```bash\npython -m pytest\n```\n")
    result = subprocess.run(
        [str(REPO_ROOT / ".ci" / "readme_test_command"), str(readme)], capture_output=True, text=True
    )
    assert result.returncode == 1 and "ci-test-command" in result.stderr and not result.stdout


@pytest.mark.slow
@needs_fashion_data
def test_sentence_transformers_example_runs_against_the_root_checkpoint():
    assert "torch.Size([3, 1])" in run_readme_example("readme-example: sentence-transformers")
