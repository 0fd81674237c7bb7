"""Regenerate the generated sections of README.md and docs/: `python tools/update_readme.py`.

Each section sits between `<!-- NAME:start -->` and `<!-- NAME:end -->` and is produced here from the code:

- README.md `models`: the named models and their released weights (`mobilenet_v1.registry`,
  `mobilenet_v1.pretrained`), Mult-Adds and parameters from the cost model, and the ImageNet accuracy the
  publisher printed (TF-slim's table for Google's releases, the paper for the two baselines);
- docs/paper-notes.md `paper-table`: `mobilenet-v1 paper`, the paper's cost tables beside ours;
- docs/cli.md `cli`: every subcommand's options, from the argparse parsers (`mobilenet_v1.cli.build_parser`).

`tests/test_readme.py` fails when a committed copy differs from what this script writes;
`python tools/update_readme.py --check` reports the same without writing.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# ImageNet top-1 / top-5 (%) as their publishers printed them, not measured here: TF-slim's table is in the registry
# (mobilenet_v1.pretrained.TF_SLIM_TOP, each `tf` entry's `published`), the paper's here.
PAPER = {  # Howard et al. 2017: top-1 only, no weights released
    "mobilenet_v1_full_conv_100_224": (71.7, "Table 4"),
    "mobilenet_v1_shallow_100_224": (65.3, "Table 5"),
}


def model_table() -> str:
    """The models, their weights and their cost: one row per registry name (and per extra released model)."""
    from mobilenet_v1 import ModelConfig, cost_of, list_models
    from mobilenet_v1.pretrained import PRETRAINED
    from mobilenet_v1.registry import model_config

    names = list_models()
    extra = [n for n in PRETRAINED if n not in names]
    lines = [
        "| model | α | input | Mult-Adds | parameters | released weights (`pretrained=`) | ImageNet top-1 / top-5 |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for name in names + extra:
        if name in names:
            config = model_config(name)
        else:  # released weights without a registry entry (e.g. timm's α = 1.25)
            width = int(re.fullmatch(r"mobilenet_v1_(\d{3})_\d+", name)[1]) / 100
            resolution = next(iter(PRETRAINED[name].values())).resolution
            config = ModelConfig(width_multiplier=width, resolution=resolution)
        cost = cost_of(config)
        sources = ", ".join(
            f"`{tag}`" + ("†" if weights.sha256 else "") for tag, weights in PRETRAINED.get(name, {}).items()
        )
        published = PRETRAINED.get(name, {}).get("tf")
        if published is not None and published.published:
            top = "{:.1f} / {:.1f} (TF-slim, `tf`)".format(*published.published)
        elif name in PAPER:
            top = "{:.1f} / – (paper, {})".format(*PAPER[name])
        else:
            top = "–"
        label = f"`{name}`" if name in names else f"`{name}`‡"
        lines.append(
            f"| {label} | {config.width_multiplier:g} | {config.resolution} | {cost.mult_adds / 1e6:.1f} M "
            f"| {cost.params / 1e6:.2f} M | {sources or '–'} | {top} |"
        )
    return "\n".join(lines)


def paper_table() -> str:
    from mobilenet_v1.paper import paper_report

    return paper_report().markdown()


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _fallback_help(dest: str) -> str:
    """What an option without a help string does, from the code's own constants."""
    from mobilenet_v1 import spec
    from mobilenet_v1.config import ACTIVATIONS

    return {
        "variant": f"one of {', '.join(spec.VARIANTS)} (Table 4, Table 5)",
        "output_stride": f"one of {', '.join(map(str, spec.OUTPUT_STRIDES))} (dilation beyond it)",
        "activation": f"one of {', '.join(ACTIVATIONS)}",
        "dropout": "dropout before the classifier",
        "num_classes": "classes of the classifier",
        "val_subset": "use a fixed random subset of N validation images",
        "seed": "seed of every random draw (sample order, augmentation, initialisation)",
        "max_steps_per_epoch": "stop each epoch after N steps (smoke tests)",
        "tensorboard": "log scalars to RUN_DIR/tensorboard",
        "augment": "no augmentation: train on the evaluation transform",
        "epochs": "epochs to train",
        "channels_last": "keep the NCHW layout (default: channels_last)",
        "batch_size": "images per batch",
        "workers": "DataLoader worker processes",
        "json": "print JSON",
        "topk": "classes to print per image",
    }.get(dest, "")


def _option(action: argparse.Action) -> str:
    if not action.option_strings:
        name = action.metavar or action.dest.upper()
        return {"?": f"[{name}]", "+": f"{name}…", "*": f"[{name}…]"}.get(action.nargs, name)
    flags = ", ".join(action.option_strings)
    if action.nargs == 0:
        return flags
    return f"{flags} {action.metavar or action.dest.upper()}"


def _default(action: argparse.Action) -> str:
    if action.nargs == 0 or action.default is None or action.required:
        return ""
    if isinstance(action.default, list):
        return ",".join(map(str, action.default))
    return str(action.default)


def cli_reference() -> str:
    """Every subcommand: what it does, its usage and a table of its arguments and options."""
    from mobilenet_v1.cli import COMMANDS, build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    for command, sub in subparsers.choices.items():
        actions = [a for a in sub._actions if not isinstance(a, argparse._HelpAction)]
        usage = ["mobilenet-v1", command]
        usage += [_option(a) for a in actions if not a.option_strings]
        usage += [
            f"{a.option_strings[0]} {a.metavar or a.dest.upper()}" for a in actions if a.option_strings and a.required
        ]
        out += [
            f"### `mobilenet-v1 {command}`",
            "",
            f"{COMMANDS[command]}.",
            "",
            "```",
            " ".join(usage + ["[options]"]),
        ]
        out += ["```", ""]
        out += ["| argument / option | default | what |", "|---|---|---|"]
        for group in sub._action_groups:
            shown = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
            if shown and group.title not in ("positional arguments", "options", "optional arguments"):
                out.append(f"| *{group.title}* | | |")
            for a in shown:
                what = a.help or _fallback_help(a.dest)
                if a.choices and not all(str(c) in what for c in a.choices):
                    what = f"{what} (one of {', '.join(map(str, a.choices))})".lstrip()
                if a.required and a.option_strings:
                    what = f"required; {what}"
                out.append(f"| `{_option(a)}` | {_cell(_default(a)) and f'`{_cell(_default(a))}`'} | {_cell(what)} |")
        out.append("")
    return "\n".join(out).rstrip()


# (file, section name, generator)
SECTIONS = [
    ("README.md", "models", model_table),
    ("docs/paper-notes.md", "paper-table", paper_table),
    ("docs/cli.md", "cli", cli_reference),
]


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def committed(text: str, name: str) -> str:
    """The committed body of section ``name`` in ``text``."""
    start, end = markers(name)
    if start not in text or end not in text:
        raise ValueError(f"section {name!r}: markers {start} … {end} not found")
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def replaced(text: str, name: str, body: str) -> str:
    start, end = markers(name)
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body.strip()}\n{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a committed section differs")
    args = ap.parse_args(argv)
    stale = []
    for file, name, generate in SECTIONS:
        path = ROOT / file
        text = path.read_text()
        body = generate()
        if committed(text, name) != body.strip():
            stale.append(f"{file} ({name})")
            if not args.check:
                path.write_text(replaced(text, name, body))
    if args.check:
        print("stale: " + ", ".join(stale) if stale else "all generated sections are current")
        return 1 if stale else 0
    print("updated: " + ", ".join(stale) if stale else "all generated sections were current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
