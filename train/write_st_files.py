"""Write the sentence-transformers files of a MOON3 checkpoint folder, so `SentenceTransformer(folder)` loads it.

    python -m train.write_st_files --checkpoint .

Writes `modules.json`, `config_sentence_transformers.json` (prompts = the processor's instructions, cosine
similarity, a requirements block), `sentence_bert_config.json`, and copies the module code
`sentence_transformers_moon3.py`. The instructions are read from the folder's `processor_config.json`, else its
`config.json`, else MOON3's defaults. `train/build_checkpoint.py` calls this for every checkpoint it saves.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE_FILE = "sentence_transformers_moon3.py"


def load_st_module():
    """The root file `sentence_transformers_moon3.py`, imported as `moon3.sentence_transformers_moon3`."""
    from moon3 import sentence_transformers_moon3

    return sentence_transformers_moon3


def read_instructions(checkpoint: Path) -> tuple[str, str]:
    """(product_instruction, query_instruction) of a checkpoint folder: its processor_config.json (the one source;
    an older config.json's copies are read only when the folder has no processor config), else MOON3's defaults."""
    from moon3 import configuration_moon3

    product = configuration_moon3.DEFAULT_PRODUCT_INSTRUCTION
    query = configuration_moon3.DEFAULT_QUERY_INSTRUCTION
    for name in ("config.json", "processor_config.json"):  # later files win: the processor owns the prompts
        path = Path(checkpoint) / name
        if path.is_file():
            values = json.loads(path.read_text(encoding="utf-8"))
            product = values.get("product_instruction", product)
            query = values.get("query_instruction", query)
    return product, query


def write_st_files(
    checkpoint: Path,
    product_instruction: str | None = None,
    query_instruction: str | None = None,
    default_mode: str = "direct",
) -> list[Path]:
    """Write the sentence-transformers files into `checkpoint`; instructions default to the folder's own."""
    st_module = load_st_module()
    checkpoint = Path(checkpoint)
    if product_instruction is None or query_instruction is None:
        product, query = read_instructions(checkpoint)
        product_instruction = product if product_instruction is None else product_instruction
        query_instruction = query if query_instruction is None else query_instruction
    written = []
    for name, content in st_module.st_files(product_instruction, query_instruction, default_mode).items():
        path = checkpoint / name
        path.write_text(json.dumps(content, indent=2, sort_keys=name != "modules.json") + "\n", encoding="utf-8")
        written.append(path)
    source = REPO_ROOT / MODULE_FILE
    target = checkpoint / MODULE_FILE
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
        written.append(target)
    logger.info("wrote sentence-transformers files to %s", checkpoint)
    return written


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="MOON3 checkpoint folder to write into")
    parser.add_argument(
        "--default-mode",
        default="direct",
        choices=["direct", "reason"],
        help="mode of encode() calls that pass no mode= (direct = one forward pass; reason = generate first)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for path in write_st_files(args.checkpoint, default_mode=args.default_mode):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
