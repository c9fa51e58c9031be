"""Make every notebook in notebooks/ start the same way and carry no outputs.

What it does, for each notebooks/*.ipynb:
- the first cell is markdown and its first line is the Colab badge (`course.colab_badge`),
- the first code cell is exactly `course.SETUP_CELL`,
- every cell carries its RISE slide type (`course.slide_type`) and the notebook RISE's settings,
  so any notebook presents as slides (seminar mode),
- outputs, execution counts and saved widget state are stripped (outputs go stale and bloat diffs;
  `tests/test_notebooks.py` fails on any that get committed).
A notebook is rewritten only if something changed. `--check` changes nothing and exits 1 if a
notebook is out of sync, for CI or a pre-commit hook.

What it does not do: run notebooks (`tests/test_notebooks.py` does) or touch any other cell.

    python scripts/sync_notebooks.py [--check]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kedit_teach.course import RISE_SETTINGS, SETUP_CELL, colab_badge, slide_type  # noqa: E402

NOTEBOOKS = ROOT / "notebooks"
BADGE_IMAGE = "colab-badge.svg"


def sync(nb: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """The notebook with its badge, setup cell and empty outputs (modified in place)."""
    cells = nb.cells
    if not cells or cells[0].cell_type != "markdown":
        cells.insert(0, nbformat.v4.new_markdown_cell(""))
    body = "\n".join(line for line in cells[0].source.splitlines() if BADGE_IMAGE not in line)
    cells[0].source = f"{colab_badge(name)}\n\n{body.strip()}".rstrip()
    code = next((c for c in cells if c.cell_type == "code"), None)
    if code is None:
        cells.insert(1, code := nbformat.v4.new_code_cell())
    code.source = SETUP_CELL
    for i, cell in enumerate(cells):
        cell.metadata.pop("execution", None)
        cell.metadata["slideshow"] = {"slide_type": slide_type(cell, i)}
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    nb.metadata["rise"] = dict(RISE_SETTINGS)
    return nb


def render(path: Path) -> str:
    """The synced text of one notebook file."""
    nb = sync(nbformat.read(path, as_version=4), path.name)
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"  # nbformat.write adds the final newline too


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only report notebooks out of sync")
    args = parser.parse_args(argv)
    stale = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        text = render(path)
        if text != path.read_text(encoding="utf-8"):
            stale.append(path.name)
            if not args.check:
                path.write_text(text, encoding="utf-8")
    verb = "out of sync (run python scripts/sync_notebooks.py)" if args.check else "synced"
    print(f"{verb}: {', '.join(stale)}" if stale else "all notebooks in sync")
    return 1 if (stale and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
