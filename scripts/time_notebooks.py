"""Time every notebook, as a presenter runs it (default) or as CI does (`--fast`).

Runs each notebook in a fresh python3 kernel with nbclient, prints its wall time and every cell
slower than `--slow` seconds (with the cell's first line), and writes the timings to a JSON file.
It changes no notebook. Run it on a quiet machine: a second busy job on 2 cores doubles the times.

    python scripts/time_notebooks.py                   # presenter mode: KEDIT_FAST unset
    python scripts/time_notebooks.py --fast 00 05      # CI mode, two notebooks
"""
from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def cell_seconds(cell) -> float:
    timing = cell.get("metadata", {}).get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def time_notebook(path: Path, fast: bool, timeout: int) -> dict:
    env_fast = os.environ.pop("KEDIT_FAST", None)
    os.environ.pop("CI", None)
    if fast:
        os.environ["KEDIT_FAST"] = "1"
    try:
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        total = time.perf_counter() - start
    finally:
        os.environ.pop("KEDIT_FAST", None)
        if env_fast is not None:
            os.environ["KEDIT_FAST"] = env_fast
    cells = [{"index": i, "seconds": round(cell_seconds(c), 1), "first_line": c.source.splitlines()[0] if c.source else ""}
             for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    return {"notebook": path.name, "fast": fast, "seconds": round(total, 1), "cells": cells}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="notebook number prefixes (default: all)")
    parser.add_argument("--fast", action="store_true", help="set KEDIT_FAST=1, as CI does")
    parser.add_argument("--slow", type=float, default=15.0, help="list cells slower than this (s)")
    parser.add_argument("--timeout", type=int, default=1800, help="per-cell timeout (s)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the timings")
    args = parser.parse_args(argv)
    paths = [p for p in sorted((ROOT / "notebooks").glob("*.ipynb"))
             if not args.only or any(p.name.startswith(k) for k in args.only)]
    results = []
    for path in paths:
        result = time_notebook(path, args.fast, args.timeout)
        results.append(result)
        print(f"{result['notebook']}: {result['seconds']:.0f} s ({result['seconds'] / 60:.1f} min)", flush=True)
        for cell in result["cells"]:
            if cell["seconds"] >= args.slow:
                print(f"    cell {cell['index']:>2}: {cell['seconds']:6.1f} s  {cell['first_line'][:70]}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"cpu_count": os.cpu_count(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
