"""The model code at the repo root as one package: `moon3.configuration_moon3`, `moon3.modeling_moon3`,
`moon3.processing_moon3`, `moon3.sentence_transformers_moon3`.

The root files stay where the Hub's remote-code loader needs them (next to config.json, importing each other
relatively), so this package has no modules of its own: it adds the repo root to its own `__path__`, the list of
folders Python searches for a package's submodules. Every script, test and benchmark imports the model code through
this one name, so each class has one identity. Works from the repo root (`python -m ...`, pytest) with no install:

    >>> from moon3.configuration_moon3 import Moon3Config
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("configuration_moon3", "modeling_moon3", "processing_moon3", "sentence_transformers_moon3")

_missing = [name for name in MODULES if not (ROOT / f"{name}.py").is_file()]
if _missing:
    raise ImportError(
        f"moon3/ must sit in a MOON3 checkout next to the model code; {ROOT} lacks "
        + ", ".join(f"{name}.py" for name in _missing)
        + ". Run from a full clone of the repository."
    )
__path__.append(str(ROOT))  # noqa: F821 (`__path__` is set by the import system for a package)
