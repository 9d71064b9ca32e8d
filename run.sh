#!/usr/bin/env bash
# MOON3 in one command: set up a virtual environment (once), evaluate the shipped checkpoint, then embed the fashion
# test catalogue and answer one text and one photo query with catalogue search.
#
#   bash run.sh                  # from any directory: set up (or reuse) .venv, evaluate moon3-mini
#   bash run.sh --mode reason    # arguments go to `python -m benchmarks.evaluate_shipped`
#
# Environment (all optional):
#   MOON3_PYTHON  the Python that creates the venv (default: python3; 3.10-3.12 supported, tested on 3.11)
#   MOON3_VENV    where the virtual environment lives (default: <repo>/.venv)
#   MOON3_TORCH   the torch requirement installed first when the venv has no torch (default: torch==2.13.0, the CPU
#                 build on this project's machines). A GPU user sets the CUDA build of their choice, e.g.
#                 MOON3_TORCH="torch --index-url https://download.pytorch.org/whl/cu128", or installs torch into
#                 the venv before the first run: a torch already in the venv is always kept.
#   HF_HUB_OFFLINE  1 unless set: everything here runs offline.
# Safe to run again: an existing venv is reused, requirements are reinstalled only when requirements.txt changed, and
# the benchmark's embedding cache (runs/) is reused; each step says which.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$REPO"
VENV="${MOON3_VENV:-$REPO/.venv}"
TORCH_SPEC="${MOON3_TORCH:-torch==2.13.0}"
START=$SECONDS

step() { printf '\n==> [%s, +%ss] %s\n' "$(date +%H:%M:%S)" "$((SECONDS - START))" "$*"; }
fail() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

step "1/5 Python"
PYTHON="${MOON3_PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || fail "no '$PYTHON' on PATH; install Python 3.10-3.12 or set MOON3_PYTHON"
"$PYTHON" - <<'EOF' || fail "MOON3 needs Python 3.10-3.12 (set MOON3_PYTHON to one)"
import sys
version = sys.version_info[:2]
print(f"Python {sys.version.split()[0]} at {sys.executable}")
if not (3, 10) <= version <= (3, 12):
    sys.exit(1)
if version != (3, 11):
    print("note: the project is tested on Python 3.11 only")
EOF

step "2/5 Virtual environment $VENV"
if [ -x "$VENV/bin/python" ]; then
    echo "reusing the existing virtual environment (delete it to start from scratch)"
else
    "$PYTHON" -m venv "$VENV"
    echo "created"
fi
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip

step "3/5 Packages"
if TORCH_VERSION=$("$VPY" -c "import torch; print(torch.__version__)" 2>/dev/null); then
    echo "torch $TORCH_VERSION is already installed: kept (set MOON3_TORCH and delete the venv to change it)"
else
    echo "installing $TORCH_SPEC first (a bare torch would pull a multi-GB CUDA build on a CPU machine)"
    # shellcheck disable=SC2086  # MOON3_TORCH may carry pip options such as --index-url
    "$VPY" -m pip install --progress-bar on $TORCH_SPEC
fi
STAMP="$VENV/.moon3-requirements.sha256"
WANTED=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANTED" ]; then
    echo "requirements.txt unchanged since the last install: reusing the installed packages"
else
    echo "installing requirements.txt (about a minute on a fresh venv)"
    "$VPY" -m pip install --progress-bar on -r requirements.txt
    echo "$WANTED" >"$STAMP.tmp" && mv "$STAMP.tmp" "$STAMP"
fi

export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false

step "4/5 Evaluate the shipped checkpoint (python -m benchmarks.evaluate_shipped $*)"
if [ -d runs/bench ]; then
    echo "runs/ exists: converted data and cached embeddings there are reused (the benchmark says so per task)"
fi
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
"$VPY" -m benchmarks.evaluate_shipped "$@" 2>&1 | tee "$LOG"

REPRODUCED=no
grep -q "^Reproduced:" "$LOG" && REPRODUCED=yes

FASHION=runs/data/fashion  # written by evaluate_shipped: the fashion test split in the benchmark format
CATALOG=runs/catalog/fashion-test
step "5/5 Catalogue search: embed the fashion test catalogue into $CATALOG, then one text and one photo query"
if [ -f "$FASHION/products.jsonl" ]; then
    # resumable: a rerun skips the finished shards (and says so)
    "$VPY" -m catalog.embed --model . --input "$FASHION/products.jsonl" --out "$CATALOG"
    echo "+ text query"
    "$VPY" -m catalog.search --db "$CATALOG" --query "men navy blue casual shirt" -k 5
    PHOTO=$("$VPY" -c "import json, sys; from pathlib import Path
root = Path(sys.argv[1])
query = next(json.loads(line) for line in open(root / 'queries/image2product.jsonl') if line.strip())
print(root / query['image'])" "$FASHION")
    echo "+ photo query: $PHOTO"
    "$VPY" -m catalog.search --db "$CATALOG" --image "$PHOTO" -k 5
else
    echo "skipped: $FASHION/products.jsonl was not written (the fashion data was not found)"
fi

step "done in $((SECONDS - START)) s"
if [ "$REPRODUCED" = yes ]; then
    echo "RESULT: the shipped checkpoint reproduces its README row"
else
    echo "RESULT: the README row was NOT reproduced (see the table above)" >&2
    exit 1
fi
