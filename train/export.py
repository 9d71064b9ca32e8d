"""Write the files a Hugging Face Hub upload of a MOON3 checkpoint needs, and check they load offline from there.

    python -m train.export --out runs/export/moon3-mini --repo-id org/moon3-mini
    huggingface-cli upload org/moon3-mini runs/export/moon3-mini   # then, on a machine with network

Writes exactly: the weights and configs (`model.safetensors`, `config.json`, `generation_config.json`), the
processor (`tokenizer.json`, `tokenizer_config.json`, `processor_config.json`, `chat_template.jinja`), the remote
code (`configuration_moon3.py`, `modeling_moon3.py`, `processing_moon3.py`, `sentence_transformers_moon3.py`), the
sentence-transformers files (`modules.json`, `config_sentence_transformers.json`, `sentence_bert_config.json`) and
`README.md`, the model card (train/model_card.py: metadata, model-index from --reference, usage, limits). Nothing
else (no training state, no tests, no docs). Then, offline, from the written folder only: AutoConfig, AutoModel,
AutoProcessor and SentenceTransformer load it, and both embed a product and a query to the same vectors.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = REPO_ROOT / "benchmarks" / "moon3_mini_reference.json"
CHECKPOINT_FILES = (
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "processor_config.json",
    "chat_template.jinja",
)
CODE_FILES = ("configuration_moon3.py", "modeling_moon3.py", "processing_moon3.py", "sentence_transformers_moon3.py")
ST_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")
UPLOAD_FILES = frozenset(CHECKPOINT_FILES + CODE_FILES + ST_FILES + ("README.md",))


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write (must be empty or absent)")
    parser.add_argument("--checkpoint", type=Path, default=REPO_ROOT, help="MOON3 checkpoint folder (default: root)")
    parser.add_argument("--repo-id", default="moon3-mini", help="Hub id used in the card's usage code and name")
    parser.add_argument(
        "--base-model",
        default=None,
        help="Hub id of the pretrained backbone, for the card's base_model (omit for a model trained from scratch)",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=REFERENCE,
        help="benchmark figures for the card (evaluate_shipped --write-reference's file)",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the offline loading check")
    return parser


def write_upload(checkpoint: Path, out: Path, repo_id: str, reference: dict, base_model: str | None = None) -> None:
    """Copy the checkpoint's upload files into `out` (atomically: a temp folder renamed at the end) plus the card."""
    from train.model_card import model_card
    from train.write_st_files import write_st_files

    checkpoint, out = Path(checkpoint), Path(out)
    missing = [name for name in CHECKPOINT_FILES if not (checkpoint / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{checkpoint} is not a complete MOON3 checkpoint: missing {', '.join(missing)}")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} is not empty; give a new folder so no stale file gets uploaded")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name in CHECKPOINT_FILES:
            shutil.copy2(checkpoint / name, staging / name)
        for name in CODE_FILES:  # the checkpoint's own copy (saved with it), else the repo's
            source = checkpoint / name if (checkpoint / name).is_file() else REPO_ROOT / name
            shutil.copy2(source, staging / name)
        write_st_files(staging)
        config = json.loads((staging / "config.json").read_text(encoding="utf-8"))
        (staging / "README.md").write_text(
            model_card(repo_id, reference, base_model=base_model, config=config), encoding="utf-8"
        )
        extra = sorted({p.name for p in staging.iterdir()} - UPLOAD_FILES)
        if extra:
            raise RuntimeError(f"unexpected files in the upload: {extra}")
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_loads_offline(folder: Path) -> dict:
    """Load `folder` offline with AutoModel/AutoProcessor and SentenceTransformer; embed one product and one query
    with both; raise if anything fails or the two disagree. Returns the embedding sizes."""
    import numpy as np
    from sentence_transformers import SentenceTransformer
    from transformers import AutoConfig, AutoModel, AutoProcessor

    folder = Path(folder).resolve()
    os.environ["HF_HUB_OFFLINE"] = "1"
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
    if type(processor).__name__ != "Moon3Processor":
        raise RuntimeError(
            f"AutoProcessor gave {type(processor).__name__}, not Moon3Processor: processor files missing"
        )
    product = {"title": "Turtle Check Men Navy Blue Shirt", "attributes": {"baseColour": "Navy Blue"}}
    query = "men navy blue casual shirts"
    own_doc = model.encode([product], processor, kind="document").float().numpy()
    own_query = model.encode([query], processor, kind="query").float().numpy()
    st = SentenceTransformer(str(folder), trust_remote_code=True, local_files_only=True, device="cpu")
    st_doc, st_query = st.encode_document([product]), st.encode_query([query])
    np.testing.assert_allclose(st_doc, own_doc, atol=1e-5, err_msg="SentenceTransformer and AutoModel disagree")
    np.testing.assert_allclose(st_query, own_query, atol=1e-5, err_msg="SentenceTransformer and AutoModel disagree")
    if own_doc.shape[1] != config.embedding_dim:
        raise RuntimeError(f"embedding size {own_doc.shape[1]} != config.embedding_dim {config.embedding_dim}")
    return {"embedding_dim": own_doc.shape[1], "files": sorted(p.name for p in folder.iterdir())}


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    reference = json.loads(args.reference.read_text(encoding="utf-8"))
    write_upload(args.checkpoint, args.out, args.repo_id, reference, base_model=args.base_model)
    logger.info("wrote %d files to %s", len(UPLOAD_FILES), args.out)
    if not args.no_check:
        checked = check_loads_offline(args.out)
        print(
            f"{args.out}: {len(checked['files'])} files; loads offline through AutoModel and SentenceTransformer "
            f"(embedding size {checked['embedding_dim']}, both give the same vectors)"
        )


if __name__ == "__main__":
    main()
