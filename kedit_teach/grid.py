"""The benchmark grid (`python -m kedit_teach bench`): every method on the same seeded cases, at
several numbers of edits, on several data sets. One JSON per cell in the eval CLI's schema,
resumable, plus a combined CSV, a Markdown table and a small summary.json that notebook 06 reads.
Resuming reads done cells back; a folder made with another seed or number of cases is refused.

A cell is (data, method, mode, N):
- N = 1 is single editing: each of the first `single_n` cases is edited alone and the model reset
  (the "1 edit" column of RECIPE's Table 1);
- N > 1 is lifelong editing: the first N cases of the data set's seeded shuffle, applied one at a
  time (sequential) and, for methods that solve a batch jointly (`Editor.batched`), in one call
  (batch). Every method at a given N gets the same cases.
A cell that can't run is kept as a row marked skipped, with the reason, never dropped: the data set
holds fewer than N cases, or its estimated edit time exceeds the per-cell budget: N x the mean edit
time of the method's largest cell so far on that data set in the same mode, else its N = 1 cell (a
batch edit is cheaper per edit than a single one: MEMIT solves 100 edits at 3.1 s each, against 20 s
alone).

After a lifelong cell the editor's general ability (general.py) is measured with its N edits in
place; the unedited model's is the NoEdit row. Each cell records its wall time and peak memory
(resident set on CPU, CUDA allocations on a GPU). Methods take turns on one loaded model through
`Editor.detach()`, as a Colab user with one 7B model needs; so the unedited model's locality answers,
the same for every method, are asked once per cell shape and shared (`evaluate.reference`).

What it does not do: load the model (the CLI does, once) or plot (viz.py, notebook 06).
"""
from __future__ import annotations

import csv
import json
import platform
import random
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .course import package_version
from .data import ASSETS, SHARED_DIR, EditCase, load_cases, load_teach, split_record
from .editors import METHODS
from .errors import UsageError
from .evaluate import MODES, evaluate
from .general import general_ability
from .metrics import plural
from .prompt_learning import TEACH_HELD_OUT

DATASETS = {  # names the CLI accepts beside full data specs
    "teach": "teach",
    "counterfact": f"counterfact:{SHARED_DIR / 'counterfact' / 'counterfact-edit.json'}",
    "zsre": "zsre-held-out",  # KnowEdit ZsRE's held-out part: RECIPE trains on the other part
}
REFERENCE_RUN = ASSETS / "bench" / "gemma-3-270m-cpu.json"  # the committed CPU run notebook 06 renders
# `bench` runs the course's grid: every method, in under 30 minutes on 2 CPU cores (RESULTS.md has
# each cell's time). What it gives up against `bench --full` (the reference run's cells): the teaching
# set; the 100-edit cells; half the single edits (its N = 1 means rest on 5 edits, not 10); fluency
# after single edits (100 tokens decoded one edit at a time: a third of a single cell), so its
# fluency is measured with the 10 edits in place; and, through a 2.5-minute cell budget, the 10-edit
# cells of ROME, MEMIT and AlphaEdit where an edit takes over 15 s (on 2 slow cores; a faster CPU or
# a GPU runs them). Budgets are minutes of estimated edit time per cell (`skip_reason`).
GRIDS = {
    "course": {"data": ["counterfact"], "n": [1, 10], "single_n": 5, "single_fluency_n": 0, "cell_budget": 2.5},
    "full": {"data": ["teach", "counterfact"], "n": [1, 10, 100], "single_n": 10, "single_fluency_n": 5,
             "cell_budget": 5.0},
}
PROTOCOLS = {"tf": "teacher_forced", "gen": "generation"}
KINDS = {"rel": "reliability", "gen": "generality", "loc": "locality", "port": "portability"}
REL_GEN_LOC = ("rel", "gen", "loc")  # the papers' three columns


@dataclass(frozen=True)
class Cell:
    data: str
    method: str
    mode: str  # "single" (N = 1), "sequential" or "batch"
    n: int

    @property
    def key(self) -> str:
        """The cell's file name: a data spec's path ("counterfact:/x/y.json") folded into the name."""
        data = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in self.data)
        return f"{data}-{self.method}-{self.mode}-n{self.n}"

    def n_cases(self, single_n: int) -> int:
        """Cases the cell edits: `single_n`, one at a time, for N = 1; else N."""
        return single_n if self.mode == "single" else self.n


class GridError(UsageError, ValueError):
    """A results folder that doesn't fit this run (another seed or case count), or a broken cell file."""


class Unavailable(Exception):
    """A method that can't run on this model; the cell is skipped with the reason."""


def load_data(data: str, seed: int = 0) -> list[EditCase]:
    """A data set's cases in their seeded order. "teach" is the bundled set's first TEACH_HELD_OUT
    cases: the rest trained RECIPE's modules, so evaluating on them would flatter it."""
    if data == "teach":
        cases = load_teach()[:TEACH_HELD_OUT]
        random.Random(seed).shuffle(cases)
        return cases
    return load_cases(DATASETS.get(data, data), seed=seed)


def plan(methods: list[str], ns: list[int], datasets: list[str]) -> list[Cell]:
    """Every cell, a method's N = 1 cell first (its edit time is the estimate for the others)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if not ns or any(n < 1 for n in ns):
        raise ValueError(f"numbers of edits must be positive integers, got {ns}")
    cells = []
    for data in datasets:
        for m in methods:
            cells += [Cell(data, m, "single", 1)] if 1 in ns else []
            for n in sorted(set(ns) - {1}):
                cells += [Cell(data, m, mode, n) for mode in ("sequential", "batch")
                          if mode == "sequential" or METHODS[m].batched]
    return cells


def skip_reason(cell: Cell, available: int, single_n: int, edit_s: float | None, budget_s: float | None,
                source: str = "N = 1") -> str | None:
    """Why `cell` can't run, or None; edit_s is the mean edit time of the cell named by `source`."""
    needed = cell.n_cases(single_n)
    if available < needed:
        return f"{cell.data} holds {available} cases, fewer than {needed}"
    if cell.mode != "single" and edit_s is not None and budget_s is not None and cell.n * edit_s > budget_s:
        return (f"about {cell.n * edit_s / 60:.1f} min of edits ({cell.n} x {edit_s:.1f} s, the {source} cell's "
                f"mean), over the {budget_s / 60:g}-min cell budget; raise --cell-budget or use a GPU")
    return None


# ----------------------------------------------------------------------------- memory and machine

def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # Linux: "5" resets the peak resident set (VmHWM) to the current one
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere the peak is the process's so far


def peak_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine(model) -> dict:
    from .models import describe
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "python": platform.python_version(),
            "platform": platform.platform(terse=True), "cpus": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "model": describe(model),
            "packages": {p: package_version(p) for p in ("kedit-teach", "torch", "transformers", "peft", "bitsandbytes",
                                                  "faiss-cpu", "sentence-transformers")}}


# ----------------------------------------------------------------------------- running

def run_cell(model, tokenizer, cell: Cell, cases: list[EditCase], settings: dict, fluency_n: int = 5,
             progress: bool = False, references: dict | None = None, general: bool = True):
    """One cell on `model`; returns (its result in the eval schema plus "general" and "grid", the model
    as found). progress: a bar over the cell's edits, cleared when it is done. references: the
    unedited model's locality answers, shared by the cells of a run (`evaluate.reference`). general:
    measure general ability after a lifelong cell (about 25 s a cell on 2 CPU cores)."""
    try:
        editor = METHODS[cell.method](model, tokenizer, **settings)
    except UsageError as e:  # nothing changed yet: no trained parts for this model, 4-bit weights for ROME
        raise Unavailable(" ".join(str(e).split())) from e
    reset_peak()
    start = time.perf_counter()
    result = evaluate(editor, cases, mode=cell.mode, fluency_n=fluency_n, progress=progress, leave=False,
                      references=references)
    # single mode resets after each edit, so its general ability is the unedited model's
    result["general"] = general_ability(editor) if general and cell.mode != "single" else None
    result["grid"] = {**asdict(cell), "seconds": time.perf_counter() - start, "peak_memory_mb": peak_mb()}
    return result, editor.detach()


def run_grid(model, tokenizer, cells: list[Cell], out: str | Path, settings: dict[str, dict] | None = None,
             seed: int = 0, single_n: int = 10, budget_s: float | None = None, fluency_n: int = 5,
             progress: bool = True, single_fluency_n: int | None = None, general: bool = True) -> list[dict]:
    """Run (or reuse) every cell; write cells/*.json, grid.csv, grid.md and summary.json under out.
    A cell whose JSON exists is read back, not rerun. Returns the summary rows in plan order.
    fluency_n: edit prompts continued for fluency in each cell; single_fluency_n: in N = 1 cells,
    if not fluency_n (each is decoded alone, after its own edit). general=False: no general ability."""
    out, settings = Path(out), settings or {}
    (out / "cells").mkdir(parents=True, exist_ok=True)
    data = {d: load_data(d, seed) for d in dict.fromkeys(c.data for c in cells)}
    splits = {d: split_record(DATASETS.get(d, d)) for d in data}
    edit_s: dict[tuple, tuple[float, str]] = {}  # (data, method, mode): (mean edit s, the cell it is from)
    references: dict = {}  # the unedited model's locality answers, asked once per probe list
    rows = []
    bar = tqdm(cells, desc="benchmark grid", disable=not progress)
    for cell in bar:
        bar.set_postfix_str(cell.key)
        path = out / "cells" / f"{cell.key}.json"
        reason = None
        if path.exists():
            result = _read_cell(path, seed, cell.n_cases(single_n))
            if result.get("split") != splits[cell.data]:
                raise GridError(f"{path} was made on other cases of {cell.data} (split {result.get('split')}), this "
                                f"run uses {splits[cell.data]}; pass another --out, or delete the cell to run it again")
        else:
            s, source = edit_s.get((cell.data, cell.method, cell.mode)) or \
                edit_s.get((cell.data, cell.method, "single"), (None, ""))
            reason = skip_reason(cell, len(data[cell.data]), single_n, s, budget_s, source)
            if reason is None:
                cases = data[cell.data][:cell.n_cases(single_n)]
                try:
                    flu = fluency_n if cell.mode != "single" or single_fluency_n is None else single_fluency_n
                    result, model = run_cell(model, tokenizer, cell, cases, settings.get(cell.method, {}), flu,
                                             progress, references, general)
                except Unavailable as e:
                    rows.append(summary_row(cell, None, str(e)))
                    continue
                result.update(data=cell.data, seed=seed, **({"split": splits[cell.data]} if splits[cell.data] else {}))
                part = path.with_suffix(".part")  # renamed when whole: an interrupted run leaves no half cell
                part.write_text(json.dumps(result, indent=1, ensure_ascii=False))
                part.replace(path)
        if reason is None:
            edit_s[(cell.data, cell.method, cell.mode)] = (result["timing"]["edit_s_mean"], f"N = {cell.n} {cell.mode}")
        rows.append(summary_row(cell, None if reason else result, reason))
    write_tables(rows, out, machine(model))
    return rows


def _read_cell(path: Path, seed: int, n_cases: int) -> dict:
    """A done cell, if it was made with this run's seed and number of cases."""
    try:
        result = json.loads(path.read_text())
        made = (result["seed"], result["n"])
    except (ValueError, KeyError, TypeError) as e:
        raise GridError(f"{path} is not a cell result ({type(e).__name__}: {e}); delete it to run the cell again") from None
    if made != (seed, n_cases):
        raise GridError(f"{path} was made with seed {made[0]} on {made[1]} cases, this run asks for seed {seed} on "
                        f"{n_cases}; pass another --out (or the same --seed and --single-n)")
    return result


# ----------------------------------------------------------------------------- tables

def summary_row(cell: Cell, result: dict | None, reason: str | None = None) -> dict:
    """One flat row: the cell, then tf_/gen_ rel, gen, loc, port, fluency, general ability, cost."""
    row = {**asdict(cell), "status": "skipped" if result is None else "done", "reason": reason or ""}
    if result is None:
        return row
    for p, proto in PROTOCOLS.items():
        for k, kind in KINDS.items():
            row[f"{p}_{k}"] = result["metrics"][proto][kind]
    general = result.get("general") or {}
    row.update(cases=result["n"], fluency=result["fluency"]["x100"], edit_s=result["timing"]["edit_s_mean"],
               infer_ms=1000 * result["timing"]["infer_s_mean"], perplexity=general.get("perplexity"),
               questions=(general.get("questions") or {}).get("generation"),
               seconds=result["grid"]["seconds"], peak_memory_mb=result["grid"]["peak_memory_mb"])
    split = result.get("split")
    if split:  # which part of a split file, so that cells on different splits are never compared by mistake
        row["split"] = f"{split['part']} of {split['file']} (seed {split['seed']}, ids {split['held_out_ids_sha256']})"
    return row


COLUMNS = ["data", "method", "mode", "n", "status", "cases"] + [f"{p}_{k}" for p in PROTOCOLS for k in KINDS] + \
          ["fluency", "perplexity", "questions", "edit_s", "infer_ms", "seconds", "peak_memory_mb", "reason", "split"]


def _fmt(v, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown(rows: list[dict]) -> str:
    """Per data set: one line per cell, metrics as rel / gen / loc / port under each protocol."""
    lines = []
    for data in dict.fromkeys(r["data"] for r in rows):
        lines += [f"**{data}**", "",
                  "| method | mode | N | teacher-forced rel / gen / loc / port | generation rel / gen / loc / port "
                  "| perplexity | questions | edit s | inference ms/probe |", "|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["data"] == data):
            head = f"| {r['method']} | {r['mode']} | {r['n']} |"
            if r["status"] == "skipped":
                lines.append(f"{head} skipped: {r['reason']} | | | | | |")
                continue
            proto = [" / ".join(_fmt(r[f"{p}_{k}"]) for k in KINDS) for p in PROTOCOLS]
            lines.append(f"{head} {proto[0]} | {proto[1]} | {_fmt(r['perplexity'], 1)} | {_fmt(r['questions'])} "
                         f"| {_fmt(r['edit_s'], 3)} | {_fmt(r['infer_ms'], 1)} |")
        lines.append("")
    return "\n".join(lines)


def skipped(rows: list[dict]):
    """The skipped cells, one line each with its data set (a method's cell can be skipped on one
    data set and run on another) and the reason."""
    import pandas as pd
    return pd.DataFrame([{k: r[k] for k in ("data", "method", "mode", "n", "reason")}
                         for r in rows if r["status"] == "skipped"], columns=["data", "method", "mode", "n", "reason"])


def provenance(summary: dict) -> str:
    """Where a summary's rows come from, in two lines: the machine and model of the first run, and how
    many rows were run again later and when (`reruns` says which and why)."""
    about = summary["machine"]
    model, reruns = about["model"], about.get("reruns", [])
    line = (f"{model['name']} ({model['dtype']}, {model['device']}), {about['cpus']} threads, "
            f"torch {about['packages']['torch']}, run on {about['date']}")
    if reruns:
        dates = sorted({r["date"] for r in reruns})
        line += (f"\n{len(reruns)} later runs ({dates[0]}" + (f" to {dates[-1]}" if len(dates) > 1 else "")
                 + ") added or replaced rows: grid.reruns(summary) says which and why")
    return line


def reruns(summary: dict):
    """The later runs merged into a summary: date, which rows, why (one line per merge)."""
    import pandas as pd
    return pd.DataFrame([{k: r.get(k, "") for k in ("date", "rows", "why")} for r in summary["machine"].get("reruns", [])],
                        columns=["date", "rows", "why"])


def lifelong(rows: list[dict], data: str) -> list[dict]:
    """The rows of `data` that a method's line against N runs through: its N = 1 (single) cell and its
    sequential cells, done or skipped."""
    return [r for r in rows if r["data"] == data and r["mode"] in ("single", "sequential")]


def headline(rows: list[dict], data: str, ns: tuple[int, ...] = (1, 100), kinds: tuple[str, ...] = REL_GEN_LOC):
    """One row per method: rel / gen / loc (or `kinds`, e.g. with "port" for ZsRE) under both
    protocols at each N in `ns` (the sequential cell, or the single one at N = 1), general ability
    (questions answered, the passage's perplexity) at each lifelong N, edit time at the largest N
    done; a skipped cell says so. The headline table of RESULTS.md."""
    import pandas as pd
    cells = {(r["method"], r["n"]): r for r in lifelong(rows, data)}
    table = []
    for method in dict.fromkeys(m for m, _ in cells):
        line = {"method": method}
        for n in ns:
            r = cells.get((method, n))
            for p, proto in PROTOCOLS.items():
                line[f"{proto.replace('_', '-')}, N = {n}"] = (
                    "–" if r is None else "skipped" if r["status"] == "skipped"
                    else " / ".join(_fmt(r[f"{p}_{k}"]) for k in kinds))
        for n in ns[1:] if ns[0] == 1 else ns:
            r = cells.get((method, n), {})
            line[f"questions / perplexity, N = {n}"] = (
                "–" if r.get("questions") is None else f"{_fmt(r['questions'])} / {_fmt(r.get('perplexity'), 1)}")
        done = [cells[(method, n)] for n in ns if cells.get((method, n), {}).get("status") == "done"]
        line["edit s"] = _fmt(done[-1]["edit_s"], 3) if done else "–"
        table.append(line)
    return pd.DataFrame(table).set_index("method")


def costs(rows: list[dict], max_n: int = 100):
    """Minutes of wall time per method and data set, summed over the done cells with N <= max_n, with
    the number of cells run and skipped, and totals: what a grid costs, and where the time goes."""
    import pandas as pd
    kept = [r for r in rows if r["n"] <= max_n]
    if not kept:
        return pd.DataFrame()
    data = list(dict.fromkeys(r["data"] for r in kept))
    table = pd.DataFrame(0.0, index=list(dict.fromkeys(r["method"] for r in kept)),
                         columns=[f"{d}, min" for d in data] + ["cells run", "skipped"])
    for r in kept:
        if r["status"] == "done":
            table.loc[r["method"], f"{r['data']}, min"] += r["seconds"] / 60
        table.loc[r["method"], "cells run" if r["status"] == "done" else "skipped"] += 1
    table["total, min"] = table[[f"{d}, min" for d in data]].sum(axis=1)
    table.loc["all"] = table.sum()
    return table.round(1).astype({"cells run": int, "skipped": int})


def write_tables(rows: list[dict], out: Path, about: dict) -> None:
    with open(out / "grid.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (out / "grid.md").write_text(markdown(rows))
    (out / "summary.json").write_text(json.dumps({"machine": about, "rows": rows}, indent=1, ensure_ascii=False))


def merge_rows(rows: list[dict], new: list[dict]) -> list[dict]:
    """`rows` with `new` added: a new row replaces the row of the same cell, and the result is in
    plan order (data sets as they first appear, methods as in METHODS, then N, then mode). How the
    committed reference run gains cells made on another day (scripts/merge_reference_run.py)."""
    def cell(r: dict) -> tuple:
        return r["data"], r["method"], r["mode"], r["n"]
    merged = {cell(r): r for r in rows}
    merged.update((cell(r), r) for r in new)
    data = list(dict.fromkeys(r["data"] for r in rows + new))
    methods = list(METHODS)

    def order(r: dict) -> tuple:
        m = r["method"]
        return (data.index(r["data"]), methods.index(m) if m in methods else len(methods), m,
                r["n"], MODES.index(r["mode"]))
    return sorted(merged.values(), key=order)


def load_summary(path: str | Path | None = None) -> dict:
    """A summary.json written by run_grid, by default the committed CPU reference run. A folder's
    timing.json (`bench --timing`) comes in as summary["timing"]: its rows."""
    path = Path(path or REFERENCE_RUN)
    timing = None
    if path.is_dir():
        if (path / "timing.json").exists():
            timing = json.loads((path / "timing.json").read_text())["rows"]
        path = path / "summary.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run `python -m kedit_teach bench --out FOLDER` first")
    summary = json.loads(path.read_text())
    if not isinstance(summary, dict) or "rows" not in summary:
        raise ValueError(f"{path} is not a grid summary (no 'rows'); pass the summary.json that bench wrote")
    if timing is not None:
        summary["timing"] = timing
    return summary


# ----------------------------------------------------------------------------- the papers beside us

PAPERS = ASSETS / "bench" / "papers.json"
PAPER_ROW = {"rome": "r-rome"}  # our ROME uses r-ROME's one key by default; the paper lists both


def _triple(values) -> str:
    return " / ".join("–" if v is None else f"{100 * v:.0f}" for v in values)


def papers_table(rows: list[dict], data: str = "counterfact", paper_data: str = "counterfact"):
    """RECIPE's Table 1 (LLaMA-2-7B, teacher-forced, %) beside our teacher-forced rel / gen / loc at
    N = 1 and at our largest sequential N, one row per method both have."""
    import pandas as pd
    paper = json.loads(PAPERS.read_text())[paper_data]
    done = [r for r in lifelong(rows, data) if r["status"] == "done"]
    table = []
    for method in dict.fromkeys(r["method"] for r in done):
        name = PAPER_ROW.get(method, method)
        if name not in paper["1"]:
            continue
        mine = sorted((r for r in done if r["method"] == method), key=lambda r: r["n"])
        first, last = mine[0], mine[-1]
        table.append({"method": method, "paper, 1 edit": " / ".join(f"{v:.0f}" for v in paper["1"][name]),
                      f"ours, {plural(first['n'], 'edit')}": _triple(first[f"tf_{k}"] for k in REL_GEN_LOC),
                      "paper, 1000 edits": " / ".join(f"{v:.0f}" for v in paper["1000"][name]),
                      "ours, most edits": f"{_triple(last[f'tf_{k}'] for k in REL_GEN_LOC)} (N = {last['n']})"})
    return pd.DataFrame(table).set_index("method") if table else pd.DataFrame()


def lte_papers_table(rows: list[dict], data: str = "counterfact", paper_data: str = "counterfact"):
    """LTE's Table 1 (LLaMA2-Chat-7B, edits one at a time: edit succ. / portability / locality in %,
    and fluency) beside our single-edit cells (teacher-forced rel / port / loc, fluency), one row
    per method both have. SERAC and MEND have no row in RECIPE's table; this is where they meet the
    papers."""
    import pandas as pd
    paper = json.loads(PAPERS.read_text())["lte_table1"][paper_data]
    single = {r["method"]: r for r in rows if r["data"] == data and r["mode"] == "single" and r["status"] == "done"}
    table = [{"method": m, "paper: succ. / port. / loc.": " / ".join(f"{v:.0f}" for v in paper[m][:3]),
              "ours (N = 1)": _triple(single[m][f"tf_{k}"] for k in ("rel", "port", "loc")),
              "paper: fluency": f"{paper[m][3]:.0f}",
              "ours: fluency": "–" if single[m].get("fluency") is None else f"{single[m]['fluency']:.0f}"}
             for m in paper if m in single]
    return pd.DataFrame(table).set_index("method") if table else pd.DataFrame()
