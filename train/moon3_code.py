"""Import the model code at the repo root (`configuration_moon3.py`, `modeling_moon3.py`, `processing_moon3.py`).

The root files import each other relatively, as the Hub's remote-code loader requires, so they must live in a
package. This module registers the repo root as the package `moon3` once and re-exports its public classes:

    >>> from train.moon3_code import Moon3Config, Moon3Model, Moon3Processor
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "moon3"


def _register_root_package() -> None:
    if PACKAGE in sys.modules:
        return
    spec = importlib.util.spec_from_loader(PACKAGE, loader=None, is_package=True)
    package = importlib.util.module_from_spec(spec)
    package.__path__ = [str(REPO_ROOT)]
    sys.modules[PACKAGE] = package


_register_root_package()
configuration_moon3 = importlib.import_module(f"{PACKAGE}.configuration_moon3")
processing_moon3 = importlib.import_module(f"{PACKAGE}.processing_moon3")

Moon3Config = configuration_moon3.Moon3Config
Moon3Processor = processing_moon3.Moon3Processor


def __getattr__(name: str):
    # modeling imports torch; load it only when a caller asks for it, so `--help` stays fast.
    if name in ("modeling_moon3", "Moon3Model", "Moon3EmbeddingOutput"):
        modeling = importlib.import_module(f"{PACKAGE}.modeling_moon3")
        return modeling if name == "modeling_moon3" else getattr(modeling, name)
    raise AttributeError(name)
