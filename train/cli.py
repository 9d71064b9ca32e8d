"""Command line of the training scripts: a short `--help` (what the script does, an example launch, `--config`, the
MOON3 options, the common TRL/transformers ones) and `--help-all` for TRL's full list of 1,000+ options.

    >>> args = parse_training_args(make_parser(), argv, script="-m train.cold_start", ...)  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

# TRL / transformers options a MOON3 launch usually sets; shown in the short help after the MOON3 ones.
COMMON_OPTIONS = (
    "model_name_or_path",
    "output_dir",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "save_steps",
    "logging_steps",
    "seed",
    "bf16",
    "resume_from_checkpoint",
)


def own_fields(cls) -> list[str]:
    """Fields declared on `cls` itself (MOON3's), not inherited from its TRL/transformers base."""
    declared = set(vars(cls).get("__annotations__", {}))
    return [f.name for f in dataclasses.fields(cls) if f.name in declared]


def short_help(parser, *, script: str, summary: str, examples: Sequence[str], moon3_classes: Sequence[type]) -> str:
    """The short help text: summary, example launch, --config, MOON3 options per class, common options."""
    actions = {action.dest: action for action in parser._actions}
    display = argparse.ArgumentParser(
        prog=f"accelerate launch [--config_file ACCELERATE.yaml] {script}",
        usage="%(prog)s --config RECIPE.yaml [--option value ...]",
        description=summary + "\n\nExample:\n" + "\n".join(f"  {line}" for line in examples),
        epilog=f"Every option can also be a key of the --config YAML; the command line overrides it. "
        f"{len(actions)} options in all: --help-all lists them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    general = display.add_argument_group("recipe and help")
    general.add_argument("--config", metavar="RECIPE.yaml", help="YAML recipe (train/recipes/*.yaml)")
    general.add_argument("-h", "--help", action="store_true", help="this message")
    general.add_argument("--help-all", action="store_true", help="every TRL / transformers option as well")
    shown = set()
    for cls in moon3_classes:
        group = display.add_argument_group(f"MOON3 options ({cls.__name__})")
        for name in own_fields(cls):
            if name in actions and name not in shown:
                group._add_action(actions[name])
                shown.add(name)
    group = display.add_argument_group("common TRL / transformers options")
    for name in COMMON_OPTIONS:
        if name in actions and name not in shown:
            group._add_action(actions[name])
    return display.format_help()


def parse_training_args(
    parser,
    argv: Sequence[str] | None,
    *,
    script: str,
    summary: str,
    examples: Sequence[str],
    moon3_classes: Sequence[type],
):
    """`parser.parse_args_and_config(argv)`, with `-h/--help` answered by :func:`short_help` and `--help-all` by the
    parser's full help (both exit 0)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help-all" in argv:
        parser.parse_args_and_config(args=["--help"])
    if "-h" in argv or "--help" in argv:
        print(short_help(parser, script=script, summary=summary, examples=examples, moon3_classes=moon3_classes))
        raise SystemExit(0)
    return parser.parse_args_and_config(args=argv)
