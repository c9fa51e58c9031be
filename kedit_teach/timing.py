"""RECIPE's Table 3 on this machine: what an edit costs, and what a query costs, with 0, 1,000 and
10,000 edits stored.

For each method and store size:
- the store is filled from a background set (CounterFact's train split) through `Editor.fill`:
  real edits where they are cheap (LTE, RECIPE: an encoder pass each), synthetic entries where a
  real edit takes seconds (GRACE: four hours for 10,000 on a CPU);
- inference: score plus an 8-token greedy continuation for a set of probes (edit prompts,
  rephrasings and unrelated prompts of other cases), the editor and the unedited model measured in
  alternation, so the machine's drift hits both sides of the ratio, after one discarded warm-up
  round. Each round uses probes not seen before, so no method answers from a cache of earlier
  queries;
- edit time: a few real edits made one at a time on top of the full store (after one uncounted),
  the paper's "edit time after 10,000 edits";
- peak memory: resident set on a CPU, CUDA allocations on a GPU.

The unedited model is timed on the same loaded model with the editor in place and standing aside
(GRACE's layer looks nothing up without a key position, LTE's LoRA layers are disabled outside its
own calls), so the ratio is what the method adds at query time.

What it does not do: score quality (evaluate.py, grid.py) or plot (viz.py).
"""
from __future__ import annotations

import statistics
import time

from tqdm.auto import tqdm

from .data import EditCase
from .editors import METHODS, NoEdit
from .grid import peak_mb, reset_peak

STORED = (0, 1_000, 10_000)
MEMORY_METHODS = ("grace", "lte", "recipe", "serac")  # the methods whose store grows with every edit
PROBE_KINDS = 3  # per case: its edit prompt, a rephrasing, an unrelated prompt


def reference_sets(seed: int = 0, n_cases: int = 220) -> tuple[list[EditCase], list[EditCase]]:
    """(background, cases) for the CPU reference timing: CounterFact's 10,000 train records fill the
    stores; the first `n_cases` of the grid's seeded CounterFact edit cases give probes and timed edits."""
    from .data import SHARED_DIR, MissingData, load_counterfact
    from .grid import load_data
    path = SHARED_DIR / "counterfact" / "counterfact-train.json"
    if not path.exists():
        raise MissingData(f"{path} is missing: the timing stores are filled from CounterFact's train split "
                                "in ../shared/data (next to the checkout)")
    return load_counterfact(path), load_data("counterfact", seed)[:n_cases]


def probes(cases: list[EditCase], rounds: int, per_round: int) -> list[tuple[list[str], list[str]]]:
    """`rounds` disjoint lists of `per_round` (prompt, target_new) probes, three per case."""
    need = rounds * -(-per_round // PROBE_KINDS)
    if len(cases) < need:
        raise ValueError(f"{rounds} rounds of {per_round} probes need {need} cases, got {len(cases)}")
    out = []
    for r in range(rounds):
        chunk = cases[r * need // rounds:(r + 1) * need // rounds]
        prompts = [p for c in chunk for p in (c.prompt, (c.rephrase_prompts or [c.prompt])[0],
                                              (c.locality or [(c.prompt, "")])[0][0])][:per_round]
        targets = [c.target_new for c in chunk for _ in range(PROBE_KINDS)][:per_round]
        out.append((prompts, targets))
    return out


def per_query(editor, prompts: list[str], targets: list[str], new_tokens: int = 8) -> float:
    """Seconds per probe: score the target, then generate `new_tokens` greedily."""
    t = time.perf_counter()
    editor.score(prompts, targets)
    editor.generate(prompts, new_tokens)
    return (time.perf_counter() - t) / len(prompts)


def measure(editor, base, rounds: list[tuple[list[str], list[str]]], new_tokens: int = 8) -> tuple[float, float]:
    """(editor, base) seconds per probe, the median over rounds; base and editor alternate on the
    same probes within a round."""
    pairs = [(per_query(base, p, t, new_tokens), per_query(editor, p, t, new_tokens)) for p, t in rounds]
    return statistics.median(e for _, e in pairs), statistics.median(b for b, _ in pairs)


def table3(model, tokenizer, background: list[EditCase], cases: list[EditCase],
           methods: tuple[str, ...] = MEMORY_METHODS, stored: tuple[int, ...] = STORED, rounds: int = 3,
           per_round: int = 64, n_edits: int = 5, settings: dict[str, dict] | None = None,
           progress: bool = True) -> list[dict]:
    """One row per (method, store size): edit s, inference ms per probe against the unedited model, peak
    memory. `background` fills the stores (it needs max(stored) cases), `cases` give the probes and
    the timed edits (their case ids must not be in `background`). Leaves the model as it found it."""
    if len(background) < max(stored):
        raise ValueError(f"{max(stored)} stored edits need as many background cases, got {len(background)}")
    warm, *rounds_ = probes(cases, rounds + 1, per_round)
    timed = cases[-(n_edits + 1):]  # the first edit of each size warms up and is not counted
    if {c.case_id for c in timed} & {c.case_id for c in background[:max(stored)]}:
        raise ValueError("the timed edits share case ids with the background; pass cases from another split")
    settings = settings or {}
    rows = []
    bar = tqdm(total=len(methods) * len(stored), desc="Table 3 timing", disable=not progress)
    for method in methods:
        editor = METHODS[method](model, tokenizer, **settings.get(method, {}))
        base = NoEdit(model, tokenizer)
        for n in stored:
            bar.set_postfix_str(f"{method}, {n} stored")
            editor.reset()
            reset_peak()
            how = editor.fill(background[:n]) if n else "empty"
            measure(editor, base, [warm])  # first calls pay one-off costs (tracing, allocations)
            infer, base_s = measure(editor, base, rounds_)
            edit_s = [info["edit_s"] for c in timed for info in editor.edit(c)]
            rows.append({"method": method, "stored": n, "fill": how, "edit_s": statistics.mean(edit_s[1:]),
                         "infer_ms": 1000 * infer, "base_ms": 1000 * base_s, "ratio": infer / base_s,
                         "peak_memory_mb": peak_mb()})
            bar.update()
        model = editor.detach()
    bar.close()
    return rows


def table(timing: list[dict], rows: list[dict] | None = None, data: str = "counterfact"):
    """Table 3 beside ours: per method, the paper's edit and inference seconds after 10,000 edits
    (LLaMA-2-7B on a GPU), our edit time and milliseconds per query at each store size with the
    ratio to the unedited model. Methods we did not time at 10,000 stored (the weight editors) get
    their edit time from the grid's single-editing cell, if `rows` are given."""
    import json

    import pandas as pd

    from .grid import PAPER_ROW, PAPERS
    paper = json.loads(PAPERS.read_text())["time_after_10000"]
    out = {}
    for r in timing:
        line = out.setdefault(r["method"], {})
        line[f"edit s, {r['stored']:,} stored"] = f"{r['edit_s']:.3f}"
        line[f"ms per query, {r['stored']:,} stored"] = f"{r['infer_ms']:.0f} ({r['ratio']:.2f}x)"
    for r in rows or []:
        if r["data"] == data and r["mode"] == "single" and r["status"] == "done" and r["method"] not in out:
            out[r["method"]] = {"edit s, one edit (grid)": f"{r['edit_s']:.3f}"}
    for method, line in out.items():
        edit, infer = paper.get(PAPER_ROW.get(method, method), (None, None))
        line["paper: edit s / inference s"] = "–" if edit is None else f"{edit:.4f} / {infer:.4f}"
    return pd.DataFrame.from_dict(out, orient="index").fillna("–")
