"""``convert``: read any source, check it against what was asked, write it — or write nothing.

Everything that can fail (reading, inferring, checking, building) happens in memory first. Only a
fully converted model is written, into a temporary directory beside the target that is then moved
into place, so a failed conversion leaves the output directory as it was (absent, or untouched).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME, save_pretrained
from ..files import remove_stale_temporaries
from ..rundir import is_run
from .adapt import adapt
from .common import describe
from .formats import OURS, detect_format, load_any
from .hf import write_hf
from .timm_sd import write_timm

TARGETS = ("auto", OURS, "keras", "hf", "timm")


@dataclass
class ConvertResult:
    """What was converted into what (``to_json`` for scripts, ``summary`` for people)."""

    source: str
    format: str
    output: str
    inferred: dict
    dropped: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def summary(self) -> str:
        i = self.inferred
        classes = f"{i['num_classes']} classes" if i["num_classes"] else "no head"
        if i.get("label_offset"):
            classes += " (logit 0 = background)"
        line = (
            f"{self.format} {self.source} -> {self.output}: alpha={i['width_multiplier']:g}, {i['resolution']}px, "
            f"{classes}, {i['activation']}, padding={i['padding']}, bn_eps={i['bn_eps']:g}"
        )
        if self.dropped:
            line += f"; dropped (not part of MobileNet): {', '.join(self.dropped)}"
        return line


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str = "auto",
    width_multiplier: float | None = None,
    num_classes: int | None = None,
    resolution: int | None = None,
    to: str = "auto",
) -> ConvertResult:
    """Convert ``src`` into ``out``, in the layout ``to`` names: ours (a directory: ``config.json`` +
    ``model.safetensors``), ``keras`` (a ``.keras`` / ``.weights.h5`` file), ``hf`` (a transformers directory) or
    ``timm`` (a ``.safetensors`` file of timm's names); ``auto``: Keras for those suffixes, else ours.

    ``width_multiplier`` / ``num_classes`` are expectations: a source that differs is an error (except
    1000 from Google's 1001 classes, which drops the background logit). ``resolution`` is recorded
    where the source has none.
    """
    src, out = Path(src), Path(out)
    if to not in TARGETS:
        raise ValueError(f"--to must be one of {', '.join(TARGETS)}; got {to!r}")
    if to == "auto":
        to = "keras" if out.name.endswith((".keras", ".weights.h5")) else OURS
    if to == "timm" and out.suffix != ".safetensors":  # before reading anything
        raise ValueError(f"{out}: a timm export is a .safetensors file")
    kind = detect_format(src) if format == "auto" else format
    model, info = load_any(src, resolution=resolution, format=kind)
    model = adapt(model, info, str(src), width_multiplier=width_multiplier, num_classes=num_classes)
    info = model.pretrained
    if to == "keras":
        from .keras_export import export_keras

        export_keras(model, out)
    elif to == "hf":
        write_hf(model, out, info)
    elif to == "timm":
        write_timm(model, out)
    else:
        _write_dir(model, info, out)
    return ConvertResult(str(src), kind, str(out), describe(model, info), list(info.source.get("dropped", [])))


def _write_dir(model, info, out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a directory")
    if is_run(out):  # its train_state.pt would no longer match the weights, and --resume would fail
        raise ValueError(f"{out}: holds a training run; convert into another directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # what a killed conversion into the same place left
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))
    try:
        save_pretrained(model, tmp, info)
        # mkdtemp/mkstemp create private (0700/0600) entries; give the result the usual umask permissions
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        for f in tmp.iterdir():
            f.chmod(0o666 & ~umask)
        if not out.exists():
            os.replace(tmp, out)  # the whole directory appears at once
        else:
            for name in (WEIGHTS_NAME, CONFIG_NAME):  # weights first: config.json names a complete model
                os.replace(tmp / name, out / name)
    except OSError as e:  # name the output the user asked for, not the temporary directory
        raise OSError(e.errno, e.strerror or str(e), str(out)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
