"""The README and docs are generated where they hold numbers, and the README's Python snippets run as written.

Generated sections (the model table, the paper's tables, the CLI reference) come from `tools/update_readme.py`;
a committed copy that differs from what it writes fails here. The snippets run offline: the cache is
pre-populated with Google's real MobileNet_v1_1.0_224, converted from the frozen graph the other tests use,
exactly where `create_model(..., pretrained=True)` looks for it.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TOOL = ROOT / "tools" / "update_readme.py"


def _tool():
    spec = importlib.util.spec_from_file_location("update_readme", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _tool()


@pytest.mark.parametrize(("file", "name"), [(file, name) for file, name, _ in tool.SECTIONS])
def test_generated_section_is_current(file, name):
    generate = {(f, n): g for f, n, g in tool.SECTIONS}[(file, name)]
    committed = tool.committed((ROOT / file).read_text(), name)
    assert committed == generate().strip(), (
        f"{file}: section {name!r} is stale: regenerate with `python tools/update_readme.py`"
    )


def test_model_table_covers_every_model_and_release():
    from mobilenet_v1 import list_models
    from mobilenet_v1.pretrained import PRETRAINED

    table = tool.committed(README.read_text(), "models")
    for name in {*list_models(), *PRETRAINED}:
        assert f"`{name}`" in table, name
    published = {n: s["tf"].published for n, s in PRETRAINED.items() if "tf" in s}
    assert len(published) == 16
    for name, (top1, top5) in published.items():  # every published figure sits on its own model's row
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}`"))
        assert f"{top1:.1f} / {top5:.1f}" in row


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def _expected_output(code: str) -> list[str]:
    """The ``# → ...`` comments of a snippet: what its prints show, in order."""
    return re.findall(r"#\s*→\s*(.*?)\s*$", code, re.M)


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _matches(got: str, want: str) -> bool:
    """Equal text, and equal numbers: to ±0.02 where the README prints decimals (rounded probabilities)."""
    if _NUMBER.sub("#", got.strip()) != _NUMBER.sub("#", want.strip()):
        return False
    for g, w in zip(_NUMBER.findall(got), _NUMBER.findall(want)):
        if ("." in w and abs(float(g) - float(w)) > 0.02) or ("." not in w and g != w):
            return False
    return True


def test_readme_has_python_snippets_with_their_output():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 3
    assert any("pretrained=True" in b and _expected_output(b) for b in blocks)


@pytest.mark.slow
def test_readme_snippets_run(tmp_path, monkeypatch, capsys):
    from mobilenet_v1 import pretrained
    from mobilenet_v1.convert import convert
    from test_convert_assets import google_graph

    cache = tmp_path / "cache"
    # where load_pretrained keeps a released model once converted: <cache>/converted/<name>.<source>/
    name, source = "mobilenet_v1_100_224", next(iter(pretrained.PRETRAINED["mobilenet_v1_100_224"]))
    assert source == "tf"  # pretrained=True takes the first source: Google's TF-slim release
    convert(google_graph(), cache / "converted" / f"{name}.{source}")
    monkeypatch.setenv("MOBILENET_V1_CACHE", str(cache))

    def no_download(url, *args, **kwargs):
        raise AssertionError(f"the README snippets must not download anything here ({url})")

    monkeypatch.setattr(pretrained, "fetch", no_download)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    capsys.readouterr()
    for i, code in enumerate(python_blocks(README.read_text()), 1):
        exec(compile(code, f"README.md, Python block {i}", "exec"), {"__name__": f"readme_block_{i}"})
        printed = capsys.readouterr().out.splitlines()
        expected = _expected_output(code)
        assert len(printed) == len(expected), f"block {i} printed {printed}, the README shows {expected}"
        for got, want in zip(printed, expected):
            assert _matches(got, want), f"block {i} printed {got!r}, the README shows {want!r}"
