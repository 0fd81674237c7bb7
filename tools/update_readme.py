"""Regenerate the generated sections of README.md: `python tools/update_readme.py`."""

from pathlib import Path

from mobilenet_v1.paper import paper_report

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- paper-table:start -->", "<!-- paper-table:end -->"

text = README.read_text()
head, rest = text.split(START, 1)
_, tail = rest.split(END, 1)
README.write_text(f"{head}{START}\n{paper_report().markdown()}\n{END}{tail}")
print(f"updated {README}")
