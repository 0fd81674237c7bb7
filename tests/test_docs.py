"""The user documentation stays usable: links resolve, the README stays short, names exist, no history.

Checks README.md and docs/*.md: every relative link points at a file that exists (and at a heading that
exists, for `#anchor` links); the README is at most 200 lines and no paragraph of prose anywhere runs past
120 words; every `mobilenet_v1.…` name the docs mention can be imported; and no line names a round of
development, a machine or an issue, which belong to git's history, not to a user's documentation.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, ROOT / "BENCHMARKS.md", *DOCS]
MAX_README_LINES = 200
MAX_PARAGRAPH_WORDS = 120


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def prose(text: str) -> str:
    """``text`` without fenced code blocks (their lines become empty, so line structure is kept)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else line)
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m[1])
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    text = re.sub(r"`[^`\n]*`", "", prose(path.read_text()))  # inline code is not a link
    return re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)


def test_slug_is_githubs():
    assert slug("Accuracy run: Fashion-MNIST ≥ 94.0% test top-1 in ≤ 60 minutes on a 2-core CPU") == (
        "accuracy-run-fashion-mnist--940-test-top-1-in--60-minutes-on-a-2-core-cpu"
    )
    assert slug("`config.json`") == "configjson"
    assert slug("### `mobilenet-v1 train`".lstrip("# ")) == "mobilenet-v1-train"


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_every_relative_link_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not checked offline
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_readme_links_every_guide():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README)}
    missing = [p.name for p in DOCS if p.resolve() not in linked]
    assert not missing, f"README.md links no docs/{', docs/'.join(missing)}"


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES})"


def paragraphs(text: str) -> list[str]:
    """Paragraphs of prose: blocks between blank lines, each list item on its own; tables, headings and
    code are not prose."""
    out = []
    for block in re.split(r"\n\s*\n", prose(text)):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines or lines[0].lstrip().startswith(("|", "#", "<!--")):
            continue
        item: list[str] = []
        for ln in lines:
            if re.match(r"^\s*(?:[-*+]|\d+\.)\s", ln) and item:
                out.append(" ".join(item))
                item = []
            item.append(ln.strip())
        out.append(" ".join(item))
    return out


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_no_paragraph_runs_long(page):
    long = [p for p in paragraphs(page.read_text()) if len(p.split()) > MAX_PARAGRAPH_WORDS]
    assert not long, f"{page.name}: paragraphs over {MAX_PARAGRAPH_WORDS} words: " + " | ".join(
        f"{len(p.split())} words: {p[:80]}…" for p in long
    )


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_every_documented_name_exists(page):
    names = set(re.findall(r"`(mobilenet_v1(?:\.\w+)+)", page.read_text()))
    names = {n for n in names if not n.endswith((".json", ".md", ".py"))}  # file names, not Python names
    missing = sorted(n for n in names if not _resolves(n))
    assert not missing, f"{page.name} names what the package does not have: {', '.join(missing)}"


# What a user's documentation must not carry: rounds of development, machines, issue numbers, local paths.
HISTORY = re.compile(
    r"\bsession\s+\d+|\bsessions?\s+(?:ago|before|earlier)\b|\bthis\s+(?:host|machine|box)\b|"
    r"\bthe\s+(?:zen\s*\d|avx[\w-]*|epyc|xeon)\s+(?:host|machine|box)\b|\bissue\s*#?\d+|(?<![\w/])#\d+\b|"
    r"(?<![\w.])(?:/root|/home/\w+|/work|/Users/\w+)/",
    re.I,
)


# The code, tests, benchmarks and tools too (a bare "#3" is a label there, so only the other patterns apply)
CODE = sorted(p for d in ("src", "tests", "benchmarks", "tools", "scripts") for p in (ROOT / d).rglob("*")
              if p.suffix in (".py", ".sh", ".c", ".toml") and p.name != "test_docs.py")  # fmt: skip
CODE_HISTORY = re.compile(HISTORY.pattern.replace(r"|(?<![\w/])#\d+\b", ""), re.I)


@pytest.mark.parametrize("path", CODE, ids=_ids(CODE))
def test_no_history_or_machine_names_in_code(path):
    text = path.read_text(errors="replace")
    bad = [f"{i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1) if CODE_HISTORY.search(line)]
    assert not bad, f"{path.name}: " + " | ".join(bad)


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_no_history_or_machine_names(page):
    bad = [f"{i}: {line.strip()}" for i, line in enumerate(page.read_text().splitlines(), 1) if HISTORY.search(line)]
    assert not bad, f"{page.name}: " + " | ".join(bad)
