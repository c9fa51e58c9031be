"""The evaluation harness: apply edits through an Editor, then score every probe under both protocols.

Modes (the `--mode` of `python -m kedit_teach eval`):
- single:     edit one case, score its probes, reset; repeat. The classic single-edit setting.
- sequential: apply the N edits one at a time, then score all N (the lifelong setting of RECIPE).
- batch:      apply all N edits in one `edit()` call, then score all N (LTE's Figure 3).

Probe kinds: reliability (the edit prompt -> target_new), generality (rephrasings -> target_new),
portability (multi-hop prompts -> their answers) and locality (unrelated prompts; in sequential and
batch runs, a locality prompt that is another case's edit prompt is dropped and counted). Locality is
reported as agreement with the model's own pre-edit predictions (the papers' form; NoEdit scores
exactly 1.0) and, as `locality_gt`, against the dataset's ground truth.

The output dict is what `--json` writes; outside checks read these names, so keep them.
What it does not do: load models or data (see `models.py`, `data.py`) or plot (see `viz.py`).
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .data import EditCase
from .editors.base import EditorStateError
from .metrics import (TokenScore, generation_match, ngram_entropy, normalize, perplexity, plural, repetition,
                      said_after, says, target_budget)

MODES = ("single", "sequential", "batch")
KINDS = ("reliability", "generality", "locality", "portability")


@dataclass
class Probe:
    case_id: str
    kind: str
    prompt: str
    target: str


def probes_of(case: EditCase) -> list[Probe]:
    out = [Probe(case.case_id, "reliability", case.prompt, case.target_new)]
    out += [Probe(case.case_id, "generality", p, case.target_new) for p in case.rephrase_prompts]
    out += [Probe(case.case_id, "locality", p, a) for p, a in case.locality]
    out += [Probe(case.case_id, "portability", p, a) for p, a in case.portability]
    return out


def unrelated(probes: list[Probe], cases: list[EditCase]) -> list[Probe]:
    """Drop locality probes that ask one of the run's own edit prompts (or their rephrasings).

    When several edits stand together, one case's neighbour ("The Louvre is in the city of") can be
    another case's edit; its answer is then meant to change, so it no longer measures locality.
    """
    edited = {normalize(q) for c in cases for q in (c.prompt, *c.rephrase_prompts)}
    return [p for p in probes if not (p.kind == "locality" and normalize(p.prompt) in edited)]


def run_probes(editor, probes: list[Probe], batch_size: int = 16,
               sliced: bool = True) -> tuple[list[TokenScore], list[str]]:
    """Teacher-forced scores and greedy generations for probes, through the editor (batched)."""
    if not probes:
        return [], []
    prompts, targets = [p.prompt for p in probes], [p.target for p in probes]
    scores = editor.score(prompts, targets, batch_size=batch_size, sliced=sliced)
    budgets = target_budget(editor.tokenizer, editor.model_inputs(prompts), targets)
    return scores, editor.generate(prompts, budgets, batch_size=batch_size)


@contextlib.contextmanager
def counted(editor, rows: int, desc: str, progress: bool = True, leave: bool = False):
    """A progress bar over the `rows` that the editor's score() and generate() run within this block
    (a probe scored and generated is two rows), moving as each batch is done. It stops at `rows`:
    a generation that goes on past its `until` text (RECIPE's until_answer) runs its rows twice."""
    with tqdm(total=rows, desc=desc, disable=not progress or not rows, leave=leave) as bar, \
            editor.counting(lambda done: bar.update(min(done, rows - bar.n))):
        yield


def reference(editor, probes: list[Probe], batch_size: int = 16, sliced: bool = True,
              shared: dict | None = None, progress: bool = False) -> dict[int, tuple[TokenScore, str]]:
    """Pre-edit predictions on the locality probes: what "unchanged" means for this model.

    shared: a dict kept across calls on one unedited model, as in the grid, where every method takes
    its turn on the same model and asks the same probes. Each probe list is then run once, and later
    calls reuse its results: the unedited outputs don't depend on the editor (tests/test_turns.py checks
    this for every method). A 100-edit CounterFact cell saves 10 s."""
    loc = [i for i, p in enumerate(probes) if p.kind == "locality"]
    shared = {} if shared is None else shared
    key = (batch_size, sliced, tuple((probes[i].prompt, probes[i].target) for i in loc))
    if key not in shared:
        with editor.unedited(), counted(editor, 2 * len(loc), f"{editor.name}: unedited answers", progress):
            shared[key] = list(zip(*run_probes(editor, [probes[i] for i in loc], batch_size, sliced)))
    return dict(zip(loc, shared[key]))


def probe_result(probe: Probe, score: TokenScore, gen: str, ref: tuple[TokenScore, str] | None) -> dict:
    row = {"kind": probe.kind, "prompt": probe.prompt, "target": probe.target, "generated": gen,
           "teacher_forced": score.token_acc, "teacher_forced_exact": score.exact,
           "generation": generation_match(gen, probe.target)}
    if ref is not None:  # locality: agreement with the unedited model, and ground truth on the side
        ref_score, ref_gen = ref
        row["gt"] = {k: row[k] for k in ("teacher_forced", "teacher_forced_exact", "generation")}
        row["teacher_forced"] = score.agreement(ref_score)
        row["teacher_forced_exact"] = float(score.pred_ids == ref_score.pred_ids)
        row["generation"] = float(normalize(gen) == normalize(ref_gen))
    return row


def _rows(probes: list[Probe], indices, scores, gens, refs) -> list[dict]:
    return [{"case_id": probes[i].case_id, **probe_result(probes[i], s, g, refs.get(i))}
            for i, s, g in zip(indices, scores, gens)]


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def aggregate(rows: list[dict]) -> dict:
    """Per-case means first, then the mean over cases, so a case with 10 probes doesn't weigh 10x."""
    by_case: dict[str, list[dict]] = {}
    for r in rows:
        by_case.setdefault(r["case_id"], []).append(r)
    metrics: dict[str, dict] = {}
    for proto in ("teacher_forced", "teacher_forced_exact", "generation"):
        metrics[proto] = {}
        for kind in KINDS:
            per_case = [_mean([r[proto] for r in rs if r["kind"] == kind]) for rs in by_case.values()]
            metrics[proto][kind] = _mean([v for v in per_case if v is not None])
        per_case = [_mean([r["gt"][proto] for r in rs if r["kind"] == "locality"]) for rs in by_case.values()]
        metrics[proto]["locality_gt"] = _mean([v for v in per_case if v is not None])
    return metrics


def fluency_texts(editor, cases: list[EditCase], max_new_tokens: int = 100, batch_size: int = 8) -> list[str]:
    """Greedy generations of up to 100 tokens from the edit prompts, through the editor."""
    return editor.generate([c.prompt for c in cases], max_new_tokens, batch_size=batch_size) if cases else []


def fluency(texts: list[str]) -> dict:
    """Weighted n-gram entropy (bits) averaged over texts; x100 is the scale of the papers' tables."""
    if not texts:
        return {"ngram_entropy": None, "x100": None, "n": 0, "samples": []}
    value = sum(map(ngram_entropy, texts)) / len(texts)
    return {"ngram_entropy": value, "x100": 100 * value, "n": len(texts), "samples": texts[:3]}


def fluency_report(editor, cases: list[EditCase], max_new_tokens: int = 60) -> dict:
    """Greedy generations from the edit prompts with the editor's edits in place: fluency (n-gram
    entropy x 100), repetition (3-grams said before), the share that begins with the new answer,
    "old_after_new": of the texts that say the new answer, the share that name the old one after it
    ("Rome, Italy. It stands in Paris"; cases with a ground truth only), and the texts themselves,
    so a table can show the words beside the numbers."""
    texts = fluency_texts(editor, cases, max_new_tokens)
    n = max(len(texts), 1)
    told = [said_after(t, c.target_new, c.ground_truth) for t, c in zip(texts, cases)
            if c.ground_truth and says(t, c.target_new)]
    return {"fluency_x100": fluency(texts)["x100"], "repetition": sum(map(repetition, texts)) / n,
            "answer": sum(generation_match(t, c.target_new) for t, c in zip(texts, cases)) / n,
            "old_after_new": sum(told) / len(told) if told else None, "texts": texts}


def fluency_reports(editors: dict, cases: list[EditCase], max_new_tokens: int = 60) -> dict[str, dict]:
    """`fluency_report` for each editor (label -> editor) with `cases` stored, each emptied after,
    so editors can take turns on one model."""
    reports = {}
    for label, editor in editors.items():
        editor.reset()
        editor.edit(cases)
        reports[label] = fluency_report(editor, cases, max_new_tokens)
        editor.reset()
    return reports


def evaluate(editor, cases: list[EditCase], mode: str = "single", batch_size: int = 16,
             fluency_n: int = 10, progress: bool = True, sliced: bool = True, leave: bool = True,
             references: dict | None = None) -> dict:
    """Edit, score and time. Returns the JSON-ready result (see module docstring). leave=False clears
    the progress bar when done (a bar inside another, as in the grid). references: the `shared` dict
    of `reference`, for runs that take turns on one model.

    batch_size=1 with sliced=False is the one-at-a-time, full-logits way reference code scores;
    it exists for the throughput benchmark and gives the same numbers.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is unknown; use one of {', '.join(MODES)}")
    if not cases:
        raise ValueError("no cases to evaluate: check --data and --n")
    start = time.perf_counter()
    editor.reset()
    every = [p for c in cases for p in probes_of(c)]
    probes = every if mode == "single" else unrelated(every, cases)
    refs = reference(editor, probes, batch_size, sliced, references, progress=progress)
    edit_s, infer_s, scores, gens, flu_cases = [], 0.0, [], [], cases[:fluency_n]
    texts: list[str] = []
    if mode == "single":  # each step is an edit and its scoring
        for c in tqdm(cases, desc=f"{editor.name} [single]: edit and score", disable=not progress, leave=leave):
            edit_s += [i["edit_s"] for i in editor.edit(c)]
            t = time.perf_counter()
            s, g = run_probes(editor, probes_of(c), batch_size, sliced)  # single mode drops nothing
            infer_s += time.perf_counter() - t
            scores += s
            gens += g
            if c in flu_cases:
                texts += fluency_texts(editor, [c])
            editor.reset()
    else:  # the edits, then the scoring with all of them in place: a bar each, so neither sits at 100%
        with tqdm(total=len(cases), desc=f"{editor.name} [{mode}]: edits", disable=not progress, leave=leave) as bar:
            if mode == "sequential":
                for c in cases:
                    edit_s += [i["edit_s"] for i in editor.edit(c)]
                    bar.update(1)
            else:
                edit_s += [i["edit_s"] for i in editor.edit(cases)]
                bar.update(len(cases))
        with counted(editor, 2 * len(probes) + len(flu_cases), f"{editor.name} [{mode}]: scoring", progress, leave):
            t = time.perf_counter()
            scores, gens = run_probes(editor, probes, batch_size, sliced)
            infer_s = time.perf_counter() - t
            texts = fluency_texts(editor, flu_cases)
    rows = _rows(probes, range(len(probes)), scores, gens, refs)
    per_case = [{"case_id": c.case_id, "edit_s": e, "probes": [r for r in rows if r["case_id"] == c.case_id]}
                for c, e in zip(cases, edit_s)]
    return {
        "method": editor.name, "model": getattr(editor.model, "kedit_name", None),
        "n": len(cases), "mode": mode, "config": editor.config(),
        "locality_probes_dropped": len(every) - len(probes),
        "metrics": aggregate(rows), "fluency": fluency(texts),
        # the first edit pays one-off costs (a traced encoder's first runs, lazy allocations): shown apart
        "timing": {"edit_s_mean": _mean(edit_s), "edit_s_first": edit_s[0] if edit_s else None,
                   "edit_s_after_first": _mean(edit_s[1:]) if len(edit_s) > 1 else None,
                   "infer_s_mean": infer_s / max(len(probes), 1),
                   "total_s": time.perf_counter() - start},
        "per_case": per_case,
    }


# A fixed passage for general ability (`metrics.perplexity`), written for the course: plain
# encyclopaedic prose on topics the edits don't touch.
PASSAGE = ("The river rises in the hills north of the town and runs south for about forty kilometres "
           "before it joins the sea. In the nineteenth century mills were built along its banks, and the "
           "town grew around them. Most of the mills closed after the railway arrived, but several of the "
           "old buildings survive and are now used as houses, workshops and a small museum. The museum "
           "explains how the water wheels worked and how the cloth was dyed, washed and dried. Each spring "
           "the town holds a market on the bridge, where farmers from the valley sell cheese, bread and "
           "vegetables, and children race paper boats down the river.")


CURVE_JSON = "curve.json"  # beside the editor's saved state in a curve's `state` folder


def _keep(editor, folder: Path, batch: int, points: list[dict], edit_s: list[float]) -> None:
    """The editor's state, then the points: a crash in between leaves a folder _resume refuses."""
    editor.save(folder)
    tmp = folder / (CURVE_JSON + ".tmp")
    tmp.write_text(json.dumps({"method": editor.name, "batch": batch, "cases": list(editor.cases),
                               "points": points, "edit_s": edit_s}, indent=1))
    tmp.replace(folder / CURVE_JSON)


def _resume(editor, cases: list[EditCase], batch: int, folder: Path) -> tuple[list[dict], list[float]]:
    """The points and edit times kept in `folder`, with the editor loaded to that checkpoint; nothing
    if the folder holds no run."""
    if not (folder / CURVE_JSON).exists():
        return [], []
    try:
        kept = json.loads((folder / CURVE_JSON).read_text())
        points, edit_s, ids = kept["points"], kept["edit_s"], kept["cases"]
    except (ValueError, KeyError) as error:
        raise EditorStateError(f"{folder / CURVE_JSON} is unreadable ({error}); delete {folder} to start the run again") from error
    wanted = [c.case_id for c in cases[:len(ids)]]
    if kept.get("method") != editor.name or kept.get("batch") != batch or ids != wanted:
        raise EditorStateError(f"{folder} holds a {kept.get('method')} run of {len(ids)} edits in batches of "
                               f"{kept.get('batch')} on other cases than this {editor.name} run's, in batches of "
                               f"{batch}; pass another folder, or delete it to start again")
    editor.load(folder)
    if list(editor.cases) != ids:
        raise EditorStateError(f"the editor saved in {folder} holds {len(editor.cases)} edits, its points "
                               f"{len(ids)}: the run stopped while saving; delete {folder} to start again")
    return points, edit_s


def _weight_norms(editor, prompt: str) -> dict:
    seen = editor.inspect(prompt)
    return {"weight_norm": seen.get("weight_norm"), "weight_norm_unedited": seen.get("original_norm")}


def curve(editor, cases: list[EditCase], checkpoints: list[int], batch_size: int = 16,
          progress: bool = True, batch: int = 1, on_point=None, state: str | Path | None = None) -> list[dict]:
    """Lifelong editing: apply the cases `batch` at a time (one by one by default; MEMIT and AlphaEdit
    solve a batch at once) and, after each checkpoint's number of edits, score every edit made so
    far. Returns [{"n_edits", "metrics", "edit_s_mean", "perplexity",
    "perplexity_unedited", "weight_norm", "weight_norm_unedited"}] per checkpoint: the perplexity of
    PASSAGE, now and before any edit, and the edited weights' norm, now and before, for editors
    whose inspect() reports one (else None). on_point(point), if given, sees each as it is measured
    (a long run can be followed and kept as it goes).

    state, a folder: after each checkpoint the editor (`Editor.save`) and the points so far are saved
    there, and a run handed a folder that holds them goes on from its last checkpoint, so a run of
    hours on a CPU, or a Colab session that disconnects, loses at most one checkpoint's edits."""
    checkpoints = sorted({min(n, len(cases)) for n in checkpoints if n > 0})
    if not checkpoints:
        raise ValueError("checkpoints must hold at least one positive number of edits")
    editor.reset()
    probes = unrelated([p for c in cases[:checkpoints[-1]] for p in probes_of(c)], cases[:checkpoints[-1]])
    refs = reference(editor, probes, batch_size, progress=progress)
    unedited = perplexity(editor.model, editor.tokenizer, PASSAGE)
    points, edit_s = _resume(editor, cases, batch, Path(state)) if state is not None else ([], [])
    done = points[-1]["n_edits"] if points else 0
    # smoothing=0: the rate is edits per second of the run so far, the scoring at checkpoints included
    bar = tqdm(total=checkpoints[-1], initial=min(done, checkpoints[-1]), desc=f"{editor.name} lifelong: edits",
               disable=not progress, smoothing=0)
    for n in (n for n in checkpoints if n > done):
        for i in range(done, n, batch):
            group = cases[i:min(i + batch, n)]
            edit_s += [info["edit_s"] for info in editor.edit(group)]
            bar.update(len(group))
        done = n
        edited = {c.case_id for c in cases[:n]}
        indices = [i for i, p in enumerate(probes) if p.case_id in edited]
        with counted(editor, 2 * len(indices), f"scoring after {plural(n, 'edit')}", progress):
            scores, gens = run_probes(editor, [probes[i] for i in indices], batch_size)
        points.append({"n_edits": n, "metrics": aggregate(_rows(probes, indices, scores, gens, refs)),
                       "edit_s_mean": _mean(edit_s), "perplexity": perplexity(editor.model, editor.tokenizer, PASSAGE),
                       "perplexity_unedited": unedited, **_weight_norms(editor, cases[0].prompt)})
        if state is not None:
            _keep(editor, Path(state), batch, points, edit_s)
        if on_point is not None:
            on_point(points[-1])
    bar.close()
    return points
