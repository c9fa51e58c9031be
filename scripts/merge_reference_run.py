"""Add cells from `bench` results folders to the committed CPU reference run (notebook 06, RESULTS.md).

A cell run again replaces its row; every other row stays as it was. `--only` keeps the new rows of
some cells only (e.g. N = 1000 when a folder also holds the N = 1 cell its estimate needed, which
the reference run already has). `--why` is recorded in machine["reruns"], after the earlier ones,
so the file says which rows came from which day. The machine description itself is kept: rows
merged this way must come from the same kind of machine, model and packages.

What it does not do: run cells (`python -m kedit_teach bench --out FOLDER` does).

    python scripts/merge_reference_run.py FOLDER [FOLDER ...] --why "..." [--only data:method:mode:n ...]
        [--rename OLD=NEW]   (the committed rows of data set OLD are kept under the label NEW first,
                              e.g. when OLD now names other cases)
        [--cells]            (rows from each folder's cells/*.json, for a run that is still going)
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kedit_teach import grid  # noqa: E402


def describe(rows: list[dict]) -> str:
    """ "zsre: noedit, ice at N = 1, 10" for the rows merged, one part per data set."""
    parts = []
    for data in dict.fromkeys(r["data"] for r in rows):
        mine = [r for r in rows if r["data"] == data]
        methods = ", ".join(dict.fromkeys(r["method"] for r in mine))
        parts.append(f"{data}: {methods} at N = {', '.join(f'{n:,}' for n in sorted({r['n'] for r in mine}))}")
    return "; ".join(parts)


def rows_of(folder: Path, from_cells: bool) -> list[dict]:
    if not from_cells:
        return grid.load_summary(folder)["rows"]
    rows = []
    for path in sorted((folder / "cells").glob("*.json")):
        result = json.loads(path.read_text())
        rows.append(grid.summary_row(grid.Cell(*(result["grid"][k] for k in ("data", "method", "mode", "n"))), result))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--why", required=True, help="which rows, and why they were run (kept in the file)")
    parser.add_argument("--only", nargs="*", default=None, help="cells to take, as data:method:mode:n")
    parser.add_argument("--cells", action="store_true", help="read the done cells, not summary.json")
    parser.add_argument("--rename", default=None, metavar="OLD=NEW", help="relabel the committed rows of a data set first")
    args = parser.parse_args()
    reference = json.loads(grid.REFERENCE_RUN.read_text())
    if args.rename:
        old, _, label = args.rename.partition("=")
        if not label or not any(r["data"] == old for r in reference["rows"]):
            sys.exit(f"--rename {args.rename}: give OLD=NEW with OLD a data set of the reference run")
        for r in reference["rows"]:
            r["data"] = label if r["data"] == old else r["data"]
    new = [r for f in args.folders for r in rows_of(f, args.cells)]
    if args.only is not None:
        keep = set(args.only)
        new = [r for r in new if f"{r['data']}:{r['method']}:{r['mode']}:{r['n']}" in keep]
    if not new:
        sys.exit("no rows to merge: check the folders and --only")
    reference["rows"] = grid.merge_rows(reference["rows"], new)
    reruns = reference["machine"].setdefault("reruns", [])
    reruns.append({"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "rows": describe(new), "why": args.why,
                   **({"renamed": args.rename} if args.rename else {})})
    grid.REFERENCE_RUN.write_text(json.dumps(reference, indent=1, ensure_ascii=False) + "\n")
    print(f"merged {len(new)} rows into {grid.REFERENCE_RUN.relative_to(ROOT)}: {len(reference['rows'])} in all")


if __name__ == "__main__":
    main()
