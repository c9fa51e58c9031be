"""The headless tour (`python -m kedit_teach tour`): one edit, made by every method in turn on one
loaded model, with what each method answers before and after on the edit prompt, a rephrasing, a
portability question (when the case has one) and an unrelated prompt, its edit time, one line on
what the row teaches, and where to go next. The edit arena (widgets.ArenaPanel) is the same turns
on an edit the student types.

Methods take turns through `Editor.detach()`, so the model is loaded once and every method starts
from the same unedited weights.

What it does not do: score (the scored run is `evaluate.py`, `tour --n`), or draw anything.
"""
from __future__ import annotations

import time

from tqdm.auto import tqdm

from .data import EditCase
from .editors import FAST_SETTINGS, METHODS, NoEdit
from .errors import UsageError
from .metrics import same_answer

EIFFEL = EditCase(case_id="tour-eiffel", subject="Eiffel Tower", prompt="The Eiffel Tower is located in the city of",
                  target_new="Rome", rephrase_prompts=["Where is the Eiffel Tower? It is in the city of"],
                  locality=[("The Brandenburg Gate is located in the city of", "Berlin")],
                  portability=[("The Eiffel Tower is located in the country of", "Italy")])
ANSWER_TOKENS = 6  # enough for a city name and a word or two: the point is which city, not prose
SHOWN_CHARS = 18
NEXT_STEPS = """Next: open the course with `jupyter lab notebooks/` and start with 00_start_here.ipynb
(the machine, the presets, what a logit is). 01 defines what an edit must do and scores the rows
above properly; 02 locates facts and edits weights (ROME, MEMIT, AlphaEdit); 03 GRACE, 04 LTE and
05 RECIPE take one method each; 06 puts every method side by side (the benchmark, the edit arena).
On Colab, use the badges in the README."""


def probes(case: EditCase) -> list[tuple[str, str, str | None]]:
    """(kind, prompt, the answer that counts as right): the edit prompt and its first rephrasing
    (target_new), its first portability question (that question's answer), and its first
    unrelated prompt (None: the right answer there is the unedited model's). Parts the case lacks
    are left out."""
    out = [("edit prompt", case.prompt, case.target_new)]
    out += [("rephrasing", case.rephrase_prompts[0], case.target_new)] if case.rephrase_prompts else []
    out += [("portability", *case.portability[0])] if case.portability else []
    out += [("unrelated", case.locality[0][0], None)] if case.locality else []
    return out


def _first_line(text: str) -> str:
    return text.strip().split("\n")[0].strip()


def take_turns(model, tokenizer, case: EditCase = EIFFEL, methods: list[str] | None = None,
               settings: dict[str, dict] | None = None, progress: bool = True) -> tuple[list[dict], object]:
    """Each method edits `case` on the same model, answers the probes, and is detached.

    Returns (rows, the model as loaded): per method {"method", "summary", "setup_s" (building the
    editor and its one-time work, `Editor.prepare`: layer statistics, projectors, trained parts),
    "edit_s" (the edit alone), "answer_s" (time per probe of the batched generation after the edit),
    "answers": [{"kind", "prompt", "before", "after", "right"}]}, one answer per `probes(case)`;
    "right": whether the answer is `metrics.same_answer` as the one that counts there (the unedited
    answer, for the unrelated prompt). A method that refuses the edit (a bad-input error) gets
    {"method", "summary", "refused": why} instead, and the others go on.
    settings: constructor options per method (default FAST_SETTINGS). methods: default, every method
    but NoEdit that can edit this model (`Editor.unsupported`).
    """
    methods = editing_methods(model) if methods is None else methods
    rows = []
    for row, model in tqdm(turns(model, tokenizer, case, methods, settings), total=len(methods),
                           desc="one edit per method", disable=not progress):
        rows.append(row)
    return rows, model


def editing_methods(model) -> list[str]:
    """Every method but NoEdit that can edit this model (4-bit weights turn ROME and MEMIT away)."""
    return [m for m, cls in METHODS.items() if m != "noedit" and cls.unsupported(model) is None]


def turns(model, tokenizer, case: EditCase, methods: list[str], settings: dict[str, dict] | None = None):
    """`take_turns` one method at a time: yields (its row, the model as loaded) as each finishes, so
    a panel can show each row as it comes. The unedited answers are asked once, before the first."""
    settings = FAST_SETTINGS if settings is None else settings
    kinds, prompts, expected = zip(*probes(case))
    before = [_first_line(a) for a in NoEdit(model, tokenizer).generate(list(prompts), ANSWER_TOKENS)]
    for name in methods:
        start = time.perf_counter()
        try:  # no trained parts for this model (RECIPE's modules, MEND's network): its row says why
            editor = METHODS[name](model, tokenizer, **settings.get(name, {}))
        except UsageError as e:
            yield {"method": name, "summary": METHODS[name].summary, "refused": " ".join(str(e).split())}, model
            continue
        try:
            editor.prepare()
            setup_s = time.perf_counter() - start
            (info,) = editor.edit(case)
        except UsageError as e:  # this method can't do its setup or this edit (ROME without a subject): its row says why
            model = editor.detach()
            yield {"method": name, "summary": editor.summary, "refused": " ".join(str(e).split())}, model
            continue
        start = time.perf_counter()
        after = [_first_line(a) for a in editor.generate(list(prompts), ANSWER_TOKENS)]
        answer_s = (time.perf_counter() - start) / len(prompts)
        model = editor.detach()
        answers = [{"kind": k, "prompt": p, "before": b, "after": a,
                    "right": same_answer(a, b if e is None else e)}
                   for k, p, e, b, a in zip(kinds, prompts, expected, before, after)]
        yield {"method": name, "summary": editor.summary, "setup_s": setup_s, "edit_s": info["edit_s"],
               "answer_s": answer_s, "answers": answers}, model


def answered(rows: list[dict]) -> list[dict]:
    """The answers of the first method that made the edit (every such row asks the same probes), or []."""
    return next((r["answers"] for r in rows if "answers" in r), [])


def took(seconds: float) -> str:
    """An edit time as people read it: milliseconds below a second."""
    return f"{1000 * seconds:.1f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _cell(answer: dict) -> str:
    short = lambda s: s if len(s) <= SHOWN_CHARS else s[:SHOWN_CHARS - 1] + "…"  # noqa: E731
    return f"{'ok' if answer['right'] else '--'} {short(answer['after'])}"


def format_model(info: dict) -> str:
    """`models.describe` as a sentence: "Loaded gemma-3-270m (Gemma3ForCausalLM): 268.1M parameters in
    18 layers, float32 on cpu, 1,022 MB"."""
    quant = f", {info['quantization']}" if info["quantization"] else ""
    return (f"Loaded {info['name']} ({info['architecture']}): {info['parameters_m']}M parameters in {info['layers']} "
            f"layers, {info['dtype']}{quant} on {info['device']}, {info['memory_mb']:,.0f} MB")


def format_tour(case: EditCase, rows: list[dict]) -> str:
    """The rows as text: the unedited answers, one line of answers per method, what each row teaches."""
    kinds = [a["kind"] for a in answered(rows)]
    w = max(len("method"), *(len(r["method"]) for r in rows))
    lines = ["Unedited, the model says:"]
    lines += [f"  {a['prompt']!r} -> {a['before']!r}" for a in answered(rows)]
    lines += ["", f"One edit: {case.prompt!r} -> {case.target_new!r}, made by each method in turn, then undone.",
              "'ok' = the new answer on the edit prompt and the rephrasing, the new fact's consequence on the "
              "portability question, the old answer on the unrelated prompt.",
              "'setup' = one-time work before the first edit: building the editor, loading its trained parts, "
              "ROME's and MEMIT's layer statistics, AlphaEdit's projectors (cached on disk: seconds on the next run). "
              "'edit' = the edit itself.", "",
              f"{'method':{w}s} {'setup':>9s} {'edit':>9s}  " + "".join(f"{k:24s}" for k in kinds)]
    for r in rows:
        if "refused" in r:
            lines.append(f"{r['method']:{w}s} {'':>9s} {'refused':>9s}  {r['refused']}")
            continue
        lines.append(f"{r['method']:{w}s} {took(r['setup_s']):>9s} {took(r['edit_s']):>9s}  "
                     + "".join(f"{_cell(a):24s}" for a in r["answers"]))
    lines += ["", "What each row teaches:"] + [f"  {r['method']:{w}s} {r['summary']}" for r in rows]
    return "\n".join(lines + ["", NEXT_STEPS])
