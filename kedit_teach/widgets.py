"""Interactive panels for the notebooks: ipywidgets on top, plain functions underneath.

What it does:
- `Panel` is the shared shell: a status line (`message`), an output area (`out`), and the latest
  `table` / `figure` kept as attributes so tests can drive a panel headlessly (set `.value`, call
  `.click()`, read the attributes). Every callback is wrapped in `guarded`, so a bad input shows
  a red message in the panel instead of a traceback. Enter in a panel's text box runs its main
  action (`_on_enter`).
- `EditorPanel` is the shell of the panels whose edits stay in one editor (GRACE, LTE, RECIPE,
  SERAC): it lists the stored edits as the editor holds them, refreshed after every action, every
  notebook cell and every display, so a cell that resets the editor never leaves a stale list.
- `edit_report` scores one edit before and after, under every protocol, for several editors.
- `EditPlayground` (notebook 01) turns typed text into an EditCase and shows `edit_report` as a
  table and a before/after chart.
- `ArenaPanel` (notebooks 01 and 06): one typed edit, made by every method in turn on the one
  loaded model (`tour.take_turns`), the answers side by side in `arena_table`, judged by
  `metrics.same_answer`, then undone.
- `GracePanel` (notebook 03) edits one GRACE editor click by click and shows Algorithm 1's decision,
  the codebook, and each query's key distance against the radii. `keys_of`, `key_distances` and
  `describe_decision` are the plain functions underneath, for the notebook to call directly.
- `LTEPanel` (notebook 04) fills an LTE memory and shows, for a query, the top-k retrieval scores,
  the exact prompt the model received, and its answer; a slider sets k.
- `RECIPEPanel` (notebook 05) stores knowledge in a RECIPE editor and shows, for a query, its
  similarity to each entry with the sentinel as the line to beat, the decision, and the answer
  with and without the continuous prompt; a toggle and a slider swap the sentinel for a fixed
  threshold.
- `SERACPanel` (notebook 03) stores edits in a SERAC editor and shows, for a query, each edit's
  scope probability with the threshold as the line to beat, which model answered, and the answer
  beside the base model's; a slider moves the threshold. `StorePanel` is the shell the three share.
- `TracePanel` (notebook 02) runs a causal trace of a typed prompt and subject and shows the
  heatmap and the strongest states (`strongest_states`).

Only widgets that exist in both ipywidgets 7.7 (Colab) and 8.x are used, and figures are plain
`go.Figure`s shown inside an `Output` (FigureWidget needs a front-end extension Colab lacks).

What it does not do: compute metrics or build figures itself (see `evaluate.py`, `viz.py`).
"""
from __future__ import annotations

import functools
import html
import itertools
import math
import re
import time
import weakref
from typing import Callable

import ipywidgets as w
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import torch
from IPython.display import display

from . import viz
from .data import EditCase
from .editors import FAST_SETTINGS, METHODS, Editor, NoEdit
from .evaluate import probe_result, probes_of, run_probes
from .metrics import PROTOCOLS, plural
from .relation_check import names
from .tour import EIFFEL, answered, took, turns

MAX_TOKENS = 300  # longer inputs make a click slow and are almost always a paste accident
LEVEL_COLORS = {"info": "#444", "busy": "#b36b00", "ok": "#1a7f37", "error": "#c62828"}


def _report(panel: "Panel", error: Exception) -> None:
    # KeyError's str() wraps its message in quotes
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    panel.say(f"{type(error).__name__}: {text}", "error")


def guarded(callback: Callable) -> Callable:
    """Wrap a panel callback so that any error becomes the panel's message, never a traceback, and
    the panel shows its editor's true state before and after (`Panel.refresh`)."""
    @functools.wraps(callback)
    def run(panel: "Panel", *args):
        try:
            panel.refresh()
            return callback(panel, *args)
        except Exception as error:  # the student must see what went wrong, in the panel itself
            _report(panel, error)
        finally:
            panel.refresh(outside=False)
    return run


def figure_mimebundle(figure: go.Figure) -> dict:
    """`figure` as the mime bundle of the current plotly renderer (see `course.setup_plotly`).

    Not `append_display_data(figure)`: a go.Figure displays itself (`_ipython_display_`), so IPython's
    formatter hands the Output an empty bundle and the figure lands in the cell, outside the panel.
    Not `figure._repr_mimebundle_()` either: it re-activates the "notebook" renderer, which sends all
    of plotly.js (~5 MB) to the cell again at every call.
    """
    data = {}
    for name in (pio.renderers.default or "plotly_mimetype").split("+"):  # "": plain Python, tests
        renderer = pio.renderers[name.strip()]
        if hasattr(renderer, "to_mimebundle"):  # browser-type renderers draw outside the notebook
            data.update(renderer.to_mimebundle(figure.to_dict()))
    return data


class Panel:
    """A status line (`message`, with its `level`), an output area, and the latest table and figure."""

    def __init__(self) -> None:
        self.message = w.HTML()
        self.out = w.Output()
        self.level = "info"
        self.table: pd.DataFrame | None = None
        self.figure: go.Figure | None = None
        self.widget: w.Widget = w.VBox([self.message, self.out])

    def say(self, text: str, level: str = "info") -> None:
        self.level = level
        self.message.value = f'<span style="color:{LEVEL_COLORS[level]}">{html.escape(text)}</span>'

    def refresh(self, outside: bool = True) -> None:
        """Show the state the panel depends on as it is now; never raises. Nothing to do here: the
        panels that keep edits in an editor do it (`EditorPanel`). `outside=False`: right after the
        panel's own action, which reports itself."""

    def show(self, table: pd.DataFrame, figure: go.Figure | None) -> None:
        """Replace the output with a table and a figure (None: nothing to draw, e.g. no edits yet)."""
        self.table, self.figure = table, figure
        # Set from the kernel, not captured with `with self.out:`: nbclient (the notebook tests, CI)
        # stalls for its whole cell timeout after a large captured output such as a plotly figure.
        self.out.outputs = ()
        self.out.append_display_data(table)
        if figure is not None:
            self.out.outputs += ({"output_type": "display_data", "data": figure_mimebundle(figure),
                                  "metadata": {}},)

    def _ipython_display_(self) -> None:
        self.refresh()
        display(self.widget)


def _text_box(description: str, value: str = "", placeholder: str = "") -> w.Text:
    return w.Text(value=value, placeholder=placeholder, description=description,
                  style={"description_width": "160px"}, layout=w.Layout(width="95%"))


def _on_enter(action: Callable[[], None], *boxes: w.Text) -> None:
    """Enter in any of `boxes` runs `action`, like a click on the panel's main button.

    On Enter the front end of ipywidgets 7 (Colab) and 8 alike sends the box a custom "submit"
    message; `Text.on_submit`, 7's API for it, is deprecated in 8, and 8's advice (observe `value`
    with continuous_update=False) would also fire when the student merely leaves the box."""
    def submitted(_box, content, _buffers) -> None:
        if isinstance(content, dict) and content.get("event") == "submit":
            action()
    for box in boxes:
        box.on_msg(submitted)


def _button(description: str, tooltip: str = "", style: str = "") -> w.Button:
    # ipywidgets' default button width (148 px) cuts a label of more than ~16 characters
    return w.Button(description=description, tooltip=tooltip, button_style=style,
                    layout=w.Layout(width=f"{max(148, 9 * len(description) + 32)}px"))


def _slider_layout() -> w.Layout:
    # the default width left a 44 px track beside a 160 px description: too short to aim with
    return w.Layout(width="95%", max_width="760px")


def check_length(tokenizer, what: str, text: str, limit: int = MAX_TOKENS) -> None:
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    if n > limit:
        raise ValueError(f"the {what} is {n} tokens long; keep it under {limit} tokens")


def new_edit(editor: Editor, prompt: str, target: str, case_id: str, subject: str = "") -> EditCase:
    """A panel's typed edit as an EditCase, refused if too long or already made on this editor."""
    check_length(editor.tokenizer, "edit prompt", prompt)
    check_length(editor.tokenizer, "new target", target)
    check_length(editor.tokenizer, "subject", subject)
    if subject and not names(prompt, subject):
        raise ValueError(f"the subject {subject!r} is not in the edit prompt; type it as the prompt writes it, "
                         "or clear the subject box")
    case = EditCase(case_id=case_id, subject=subject, source="panel", prompt=prompt, target_new=target)
    for earlier in editor.cases.values():
        if (earlier.prompt, earlier.target_new) == (case.prompt, case.target_new):
            raise ValueError(f"this edit was already added as {earlier.case_id}; change the prompt "
                             "or the target (or remove it first)")
    return case


def unedited_answer(editor: Editor, prompt: str, max_new_tokens: int = 5) -> str:
    """What the unedited model says after `prompt` (first line), to use as its locality target."""
    with editor.unedited():
        said = editor.generate(prompt, max_new_tokens).strip().split("\n")[0].strip()
    if not said:
        raise ValueError(f"the model continues {prompt!r} with nothing; type the answer you expect")
    return said


def edit_report(editors: dict[str, Editor], case: EditCase, with_answers: bool = True) -> list[dict]:
    """Per-probe scores of `case` before and after each editor applies it; editors end reset.

    One row per (method, probe kind, prompt): {"method", "kind", "prompt", "target",
    "before": {protocol: score}, "after": {protocol: score}, "generated_before", "generated_after"}.
    Locality rows score agreement with the unedited model; with_answers adds "locality_gt" rows
    scored against the given locality answers.
    """
    probes = probes_of(case)
    first = next(iter(editors.values()))
    first.reset()
    # Every editor wraps the same unedited model, so "before" is scored once for all of them.
    before = run_probes(first, probes)
    refs = {i: (s, g) for i, (p, s, g) in enumerate(zip(probes, *before)) if p.kind == "locality"}
    rows = []
    for name, editor in editors.items():
        editor.reset()
        try:
            editor.edit(case)
            after = run_probes(editor, probes)
        finally:
            editor.reset()
        for i, probe in enumerate(probes):
            b, a = (probe_result(probe, scores[i], gens[i], refs.get(i)) for scores, gens in (before, after))
            views = [(probe.kind, b, a)]
            if "gt" in b and with_answers:
                views.append(("locality_gt", b["gt"], a["gt"]))
            rows += [{"method": name, "kind": kind, "prompt": probe.prompt, "target": probe.target,
                      "before": {p: vb[p] for p in PROTOCOLS}, "after": {p: va[p] for p in PROTOCOLS},
                      "generated_before": b["generated"], "generated_after": a["generated"]}
                     for kind, vb, va in views]
    return rows


class EditPlayground(Panel):
    """Type an edit, click "Add edit": every method edits, is scored before and after, and is reset."""

    def __init__(self, model, tokenizer, methods: tuple[str, ...] = ("noedit", "ice", "ft-l"),
                 settings: dict[str, dict] = FAST_SETTINGS) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.editors = {m: METHODS[m](model, tokenizer, **settings.get(m, {})) for m in methods}
        self.history: list[tuple[EditCase, list[dict]]] = []
        self._ids = itertools.count(1)
        self.prompt = _text_box("edit prompt x*", "The Eiffel Tower is located in the city of")
        self.target = _text_box("new target y*", "Rome")
        self.rephrase = _text_box("a rephrasing", "Where is the Eiffel Tower? It is in the city of",
                                  "optional: the same question, other words")
        self.locality_prompt = _text_box("locality prompt", "The Brandenburg Gate is located in the city of",
                                         "optional: an unrelated fact that must not change")
        self.locality_answer = _text_box("its answer", "Berlin",
                                         "optional: blank = whatever the unedited model says")
        self.add = _button("Add edit", "edit with every method, score before and after, then undo", "primary")
        self.add.on_click(self.on_add)
        _on_enter(self.on_add, self.prompt, self.target, self.rephrase, self.locality_prompt, self.locality_answer)
        self.widget = w.VBox([self.prompt, self.target, self.rephrase, self.locality_prompt,
                              self.locality_answer, self.add, self.message, self.out])
        self.say(f"Type an edit and click 'Add edit'. Methods: {', '.join(self.editors)}.")

    def case(self) -> EditCase:
        """The EditCase the text boxes describe; raises with a readable message if they can't."""
        for what, box in (("edit prompt", self.prompt), ("new target", self.target),
                          ("rephrasing", self.rephrase), ("locality prompt", self.locality_prompt),
                          ("locality answer", self.locality_answer)):
            check_length(self.tokenizer, what, box.value)
        rephrase, loc_prompt, loc_answer = (b.value.strip() for b in
                                            (self.rephrase, self.locality_prompt, self.locality_answer))
        if loc_prompt and not loc_answer:
            loc_answer = unedited_answer(next(iter(self.editors.values())), loc_prompt)
        return EditCase(case_id=f"playground-{next(self._ids)}", subject="", source="playground",
                        prompt=self.prompt.value, target_new=self.target.value,
                        rephrase_prompts=[rephrase] if rephrase else [],
                        locality=[(loc_prompt, loc_answer)] if (loc_prompt or loc_answer) else [])

    @guarded
    def on_add(self, _button=None) -> None:
        self.add.disabled = True  # a second click while the first one runs would queue up
        try:
            self.say("editing… every method edits, is scored before and after, then reset "
                     "(a few seconds on a CPU)", "busy")
            start = time.perf_counter()
            case = self.case()
            for earlier, _ in self.history:
                if (earlier.prompt, earlier.target_new) == (case.prompt, case.target_new):
                    raise ValueError(f"this edit was already added as {earlier.case_id}; "
                                     "change the prompt or the target to try another")
            rows = edit_report(self.editors, case, with_answers=bool(self.locality_answer.value.strip()))
            self.history.append((case, rows))
            self.show(viz.before_after_table(rows),
                      viz.before_after(rows, title=f"{case.prompt} → {case.target_new}"))
            self.say(f"{case.case_id} done in {time.perf_counter() - start:.1f} s; "
                     "every editor is back to the unedited model", "ok")
        finally:
            self.add.disabled = False


# ----------------------------------------------------------------------------- the edit arena (01, 06)

ARENA_RULE = ("✓: the answer's first phrase (up to the first , . ; : ? ! or line break; case and punctuation "
              "ignored) matches the expected one word for word, as far as the shorter goes. Expected: the new target "
              "(edit prompt, rephrasing), the given answer (portability), the unedited model's own answer (unrelated)")


def arena_table(rows: list[dict]) -> pd.DataFrame:
    """`tour.take_turns` rows, one per method: each probe's answer after the edit, ✓ when it is
    `metrics.same_answer` as the one that counts there (`ARENA_RULE`), ✗ if not; then the edit time
    and how many came out right. A method that refused the edit gets empty cells (`arena_notes`
    says why)."""
    kinds = [a["kind"] for a in answered(rows)]
    table = []
    for r in rows:
        if "refused" in r:
            table.append({"method": r["method"], **{k: "" for k in kinds}, "edit": "refused", "right": "–"})
            continue
        right = [a["right"] for a in r["answers"]]
        table.append({"method": r["method"],
                      **{a["kind"]: f"{'✓' if ok else '✗'} {a['after']}" for a, ok in zip(r["answers"], right)},
                      "edit": took(r["edit_s"]), "right": f"{sum(right)}/{len(right)}"})
    return pd.DataFrame(table).set_index("method")


def arena_notes(rows: list[dict]) -> str:
    """HTML under the arena's table: the ✓ rule with the unedited answers, and each refusal in full."""
    before = "; ".join(f"{a['kind']}: {a['before']!r}" for a in answered(rows))
    notes = [f"<small>{html.escape(ARENA_RULE)}.{' Unedited, the model said ' + html.escape(before) if before else ''}</small>"]
    notes += [f"<b>{html.escape(r['method'])} refused the edit:</b> {html.escape(r['refused'])}" for r in rows if "refused" in r]
    return "<br>".join(notes)


class ArenaPanel(Panel):
    """Type one edit; every chosen method makes it in turn on the one loaded model (`take_turns`),
    and the answers are shown side by side, one row per method, the table growing as each method
    finishes; then every edit is undone."""

    def __init__(self, model, tokenizer, methods: tuple[str, ...] | None = None,
                 settings: dict[str, dict] = FAST_SETTINGS) -> None:
        super().__init__()
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.rows: list[dict] = []
        self._ids = itertools.count(1)
        usable = [m for m, cls in METHODS.items() if m != "noedit" and cls.unsupported(model) is None]
        self.methods = w.SelectMultiple(options=usable, value=tuple(m for m in (methods or usable) if m in usable),
                                        description="methods", rows=min(len(usable), 9),
                                        style={"description_width": "160px"})
        self.prompt = _text_box("edit prompt x*", EIFFEL.prompt)
        self.subject = _text_box("its subject", EIFFEL.subject, "ROME, MEMIT and AlphaEdit edit at its last token")
        self.target = _text_box("new target y*", EIFFEL.target_new)
        self.rephrase = _text_box("a rephrasing", EIFFEL.rephrase_prompts[0], "optional")
        self.port_prompt = _text_box("portability question", EIFFEL.portability[0][0], "optional: a consequence")
        self.port_answer = _text_box("its answer", EIFFEL.portability[0][1], "needed with the question")
        self.unrelated = _text_box("unrelated prompt", EIFFEL.locality[0][0], "optional: must not change")
        self.run = _button("Edit with every method", "each method edits in turn, answers, and is undone", "primary")
        self.run.on_click(self.on_run)
        _on_enter(self.on_run, self.prompt, self.subject, self.target, self.rephrase, self.port_prompt,
                  self.port_answer, self.unrelated)
        self.progress = w.IntProgress(value=0, min=0, max=1, description="methods done",
                                      style={"description_width": "160px"}, layout=w.Layout(width="95%"))
        self.notes = w.HTML()  # the ✓ rule and, in full, why a method refused
        self.widget = w.VBox([self.prompt, self.subject, self.target, self.rephrase, self.port_prompt,
                              self.port_answer, self.unrelated, self.methods, self.run, self.progress,
                              self.message, self.out, self.notes])
        self.say("Type an edit, pick methods (ctrl/cmd-click), and click 'Edit with every method'.")

    def case(self) -> EditCase:
        boxes = (("edit prompt", self.prompt), ("subject", self.subject), ("new target", self.target),
                 ("rephrasing", self.rephrase), ("portability question", self.port_prompt),
                 ("portability answer", self.port_answer), ("unrelated prompt", self.unrelated))
        for what, box in boxes:
            check_length(self.tokenizer, what, box.value)
        prompt, subject, target, rephrase, port_q, port_a, unrelated = (b.value.strip() for _, b in boxes)
        if not prompt or not target:
            raise ValueError("type an edit prompt and a new target")
        if bool(port_q) != bool(port_a):
            raise ValueError("give the portability question and its answer together, or neither")
        return EditCase(case_id=f"arena-{next(self._ids)}", subject=subject, source="arena", prompt=prompt,
                        target_new=target, rephrase_prompts=[rephrase] if rephrase else [],
                        portability=[(port_q, port_a)] if port_q else [],
                        # the answer that counts there is the unedited model's, so take it as the pair's
                        locality=[(unrelated, unedited_answer(NoEdit(self.model, self.tokenizer), unrelated))]
                        if unrelated else [])

    @guarded
    def on_run(self, _button=None) -> None:
        if not self.methods.value:
            raise ValueError("pick at least one method")
        self.run.disabled = True
        try:
            self.rows, self.table, self.figure = [], None, None
            self.out.outputs, self.notes.value = (), ""  # the last edit's answers must not pass for this one's
            case = self.case()
            methods = list(self.methods.value)
            self.progress.max, self.progress.value = len(methods), 0
            start = time.perf_counter()
            each = turns(self.model, self.tokenizer, case, methods, self.settings)
            for i, name in enumerate(methods, 1):
                self.say(f"{name} edits, answers and is undone ({i} of {len(methods)}; "
                         f"{time.perf_counter() - start:.0f} s so far)…", "busy")
                row, self.model = next(each)  # one method at a time: the table and the progress grow
                self.rows.append(row)
                self.progress.value = i
                self.show(arena_table(self.rows), None)
                self.notes.value = arena_notes(self.rows)
            self.say(f"{plural(len(methods), 'method')} done in {time.perf_counter() - start:.0f} s; "
                     "the model is as loaded again", "ok")
        finally:
            self.run.disabled = False


# ----------------------------------------------------------------------------- panels over one editor's edits

_LIVE: weakref.WeakSet = weakref.WeakSet()  # the EditorPanels to refresh after each notebook cell


def refresh_panels(*_result) -> None:
    """Refresh every EditorPanel still alive. IPython calls it after each cell (`post_run_cell`): a
    later cell that resets or refills an editor must not leave its panel, further up, listing edits
    that are gone."""
    for panel in list(_LIVE):
        panel.refresh()


def _refresh_after_each_cell() -> None:
    from IPython import get_ipython
    shell = get_ipython()
    if shell is not None and refresh_panels not in shell.events.callbacks["post_run_cell"]:
        shell.events.register("post_run_cell", refresh_panels)


class EditorPanel(Panel):
    """The shell of the panels whose edits stay in one editor until "Reset" (GRACE, LTE, RECIPE,
    SERAC): `stored` lists the editor's edits as the editor holds them (`editor.cases`), and new
    edits are numbered `{id_prefix}-{n}` after the editor's, never the panel's own count.

    Other code may change the editor too (a notebook cell resets it, or stores a hundred edits), so
    the list is read again before and after every action of the panel, after every notebook cell
    and whenever the panel is displayed. An output drawn from edits that are no longer the editor's
    is taken away (`_outdated`), and a change made outside the panel is said in its message."""

    id_prefix = "edit"

    def __init__(self, editor) -> None:
        super().__init__()
        self.editor = editor
        self.stored = w.HTML()
        self._known = self._drawn = self._edits()  # the edits at the last refresh, and under the output
        self.refresh(outside=False)
        _LIVE.add(self)
        _refresh_after_each_cell()

    def _edits(self) -> tuple:
        return tuple((c.case_id, c.prompt, c.target_new) for c in self.editor.cases.values())

    def _next_id(self) -> str:
        """One past the highest number among the editor's `{id_prefix}-{n}` edits: no clash with a
        stored edit, and after a reset the numbering starts again at 1."""
        pattern = re.compile(rf"{re.escape(self.id_prefix)}-(\d+)")
        taken = [int(m.group(1)) for m in map(pattern.fullmatch, self.editor.cases) if m]
        return f"{self.id_prefix}-{max(taken, default=0) + 1}"

    def show(self, table: pd.DataFrame, figure: go.Figure | None) -> None:
        super().show(table, figure)
        self._drawn = self._edits()

    def refresh(self, outside: bool = True) -> None:
        try:
            edits = self._edits()
            shown = ", ".join(f"{i} ({p} → {t})" for i, p, t in edits[:5]) + (
                f" and {len(edits) - 5} more" if len(edits) > 5 else "")
            self.stored.value = (f"<b>{plural(len(edits), 'edit')} stored:</b> {html.escape(shown)}" if edits else
                                 "<b>nothing stored</b>: the model answers as unedited")
            if edits == self._known:
                return
            self._known = edits
            if edits != self._drawn:
                self._outdated()
            if outside:
                self.say(f"the editor was changed outside this panel: {plural(len(edits), 'edit')} stored now", "info")
        except Exception as error:  # called after every notebook cell: a traceback there would be anyone's guess
            _report(self, error)

    def _outdated(self) -> None:
        """Take away (or redraw) the output drawn from edits the editor no longer holds."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- GRACE (notebook 03)

def keys_of(editor, prompts: list[str]) -> torch.Tensor:
    """GRACE keys [n, d]: the wrapped layer's input at each prompt's last token, as the lookup sees it."""
    return torch.stack([editor.key(p) for p in prompts])


def key_distances(editor, groups: dict[str, list[str]], entry: int | None = None) -> list[dict]:
    """For each prompt, the distance from its key to a codebook entry's key, and that entry's ε.

    groups maps a group name ("edit prompt", "rephrasings", ...) to its prompts. The entry is each
    query's nearest (the one the lookup compares with) or, if given, `entry` for all. `fired` is
    the entry whose value the lookup actually uses, or None. Rows feed `viz.distances_vs_radii`.
    """
    rows = []
    for group, prompts in groups.items():
        for prompt in prompts:
            seen = editor.inspect(prompt)
            if not seen["eps"]:
                raise ValueError("the codebook is empty: add an edit first")
            distances = seen["distances"]
            i = min(range(len(distances)), key=distances.__getitem__) if entry is None else entry
            if not 0 <= i < len(seen["eps"]):
                raise ValueError(f"entry {i} does not exist: the codebook has {plural(len(seen['eps']), 'entry', 'entries')}")
            rows.append({"group": group, "prompt": prompt, "distance": distances[i], "entry": i,
                         "eps": seen["eps"][i], "label": seen["labels"][i], "fired": seen["fired"]})
    return rows


def describe_decision(info: dict, eps_init: float) -> str:
    """Algorithm 1's decision for one edit (an `edit()` info or `log` item) in words, with the numbers."""
    op, n = info["op"], info.get("entry")
    if "d_min" not in info:
        words = f"add: the codebook was empty, so entry {n} is new with ε = ε_init = {eps_init:.3g}"
    else:
        i, d, eps_i = info["nearest"], info["d_min"], info["nearest_eps"]
        reach = (f"d_min = {d:.3g} to entry {i}, "
                 f"ε_{i} + ε_init = {eps_i:.3g} + {eps_init:.3g} = {eps_i + eps_init:.3g}")
        if op == "add":
            words = f"add: {reach}; farther than that, so entry {n} is new with ε = {eps_init:.3g}"
        elif op == "expand":
            words = (f"expand: {reach}; within reach and the same answer, "
                     f"so ε_{i}: {eps_i:.3g} → {info['eps']:.3g}")
        else:
            words = (f"split: {reach}; within reach but another answer, so ε_{i} and the new entry {n}'s ε "
                     f"are both d_min/2 = {info['eps']:.3g}")
    if "loss_start" in info:
        words += f" (value trained: loss {info['loss_start']:.2f} → {info['loss_end']:.2f})"
    return words


class GracePanel(EditorPanel):
    """Edit a GRACE editor click by click: Algorithm 1's decision, the codebook, key distances vs radii.

    The panel keeps the editor's edits (unlike EditPlayground, which undoes them): the codebook
    grows with every click until "Reset". Probe prompts are only measured, never edited.
    """

    id_prefix = "grace"

    def __init__(self, editor) -> None:
        super().__init__(editor)
        self.prompt = _text_box("edit prompt x*", "The Eiffel Tower is located in the city of")
        self.target = _text_box("new target y*", "Rome")
        self.probes = w.Textarea(
            value="The Eiffel Tower can be found in the city of\nThe Louvre is located in the city of",
            placeholder="probe prompts, one per line", description="probe prompts",
            style={"description_width": "160px"}, layout=w.Layout(width="95%", height="80px"))
        # 0.1 to 20 brackets the key distances of Gemma-3-270M's layer 12 (about 0.5 to 6); the range
        # widens if the editor starts outside it, so the slider never silently clamps ε_init.
        exponent = math.log10(max(editor.eps_init, 1e-6))
        lowest, highest = min(-1.0, math.floor(exponent)), max(1.3, math.ceil(exponent))
        self.eps = w.FloatLogSlider(value=editor.eps_init, base=10, min=lowest, max=highest, step=0.01,
                                    description="ε_init", readout_format=".2f",
                                    style={"description_width": "160px"}, layout=_slider_layout())
        self.eps.observe(self.on_eps, names="value")
        self.add = _button("Add edit", "run Algorithm 1 for this edit: add, expand or split", "primary")
        self.measure = _button("Measure probes", "redraw the distances, no edit")
        self.reset = _button("Reset", "empty the codebook", "warning")
        self.remove_id = w.Text(placeholder="case id, e.g. grace-1", description="remove",
                                layout=w.Layout(width="300px"))
        self.remove = _button("Remove", "rebuild the codebook without this edit")
        self.add.on_click(self.on_add)
        self.measure.on_click(self.on_measure)
        self.reset.on_click(self.on_reset)
        self.remove.on_click(self.on_remove)
        _on_enter(self.on_add, self.prompt, self.target)
        _on_enter(self.on_remove, self.remove_id)
        self.widget = w.VBox([self.prompt, self.target, self.probes, self.eps,
                              w.HBox([self.add, self.measure, self.reset]),
                              w.HBox([self.remove_id, self.remove]), self.stored, self.message, self.out])
        self.say(f"Type an edit and click 'Add edit'. ε_init = {editor.eps_init:.3g}; "
                 f"the codebook has {plural(len(editor.adapter.eps), 'entry', 'entries')}.")

    def _case(self) -> EditCase:
        return new_edit(self.editor, self.prompt.value, self.target.value, self._next_id())

    def _outdated(self) -> None:
        self.show(self.editor.codebook(), None)

    def _probes(self) -> list[str]:
        """The non-blank probe lines; checked before anything changes, so a bad one edits nothing."""
        probes = [p.strip() for p in self.probes.value.splitlines() if p.strip()]
        for p in probes:
            check_length(self.editor.tokenizer, "probe prompt", p)
        return probes

    def _draw(self, probes: list[str]) -> None:
        """Show the codebook and, if it has entries, the edit prompt's and the probes' distances."""
        table, figure = self.editor.codebook(), None
        if len(table):
            prompt = self.prompt.value.strip()
            rows = key_distances(self.editor, {"edit prompt": [prompt] if prompt else [], "probes": probes})
            figure = viz.distances_vs_radii(rows) if rows else None
        self.show(table, figure)

    @guarded
    def on_add(self, _button=None) -> None:
        self.add.disabled = True  # a second click while the first one trains would queue up
        try:
            self.say("editing… Algorithm 1, and a value trained unless it is an expand", "busy")
            start = time.perf_counter()
            case, probes = self._case(), self._probes()
            (info,) = self.editor.edit(case)
            self._draw(probes)
            self.say(f"{case.case_id}: {describe_decision(info, self.editor.eps_init)} "
                     f"[{time.perf_counter() - start:.1f} s]", "ok")
        finally:
            self.add.disabled = False

    @guarded
    def on_measure(self, _button=None) -> None:
        if not len(self.editor.adapter.eps):
            raise ValueError("the codebook is empty: add an edit first")
        self._draw(self._probes())
        self.say("distances measured; the codebook did not change", "ok")

    @guarded
    def on_eps(self, change: dict) -> None:
        self.editor.eps_init = float(change["new"])
        self.say(f"ε_init = {self.editor.eps_init:.3g} for the next edits; existing entries keep "
                 "their radii (Algorithm 1 only changes a radius when an edit lands near it)", "info")

    @guarded
    def on_reset(self, _button=None) -> None:
        self.editor.reset()
        self.show(self.editor.codebook(), None)
        self.say("codebook emptied: the model is back to its original outputs", "ok")

    @guarded
    def on_remove(self, _button=None) -> None:
        case_id, probes = self.remove_id.value.strip(), self._probes()
        self.editor.remove(case_id)  # an unknown id raises KeyError, which lists the edited ids
        self._draw(probes)
        self.say(f"removed {case_id}: the codebook was rebuilt from the other edits", "ok")


def retrieval_table(info: dict) -> pd.DataFrame:
    """`LTE.inspect(prompt)["retrieved"]` as a table, best first."""
    rows = info["retrieved"]
    return pd.DataFrame({"rank": range(1, len(rows) + 1), "case_id": [r["case_id"] for r in rows],
                         "descriptor": [r["descriptor"] for r in rows],
                         "score": [round(r["score"], 4) for r in rows]})


class StorePanel(EditorPanel):
    """The shell of the LTE, RECIPE and SERAC panels: type edits into the editor's store, ask a query,
    see what the model received and answered; remove one edit or reset. Subclasses add their
    controls and draw what retrieval found (`_answer`)."""

    def __init__(self, editor, max_new_tokens: int = 12) -> None:
        super().__init__(editor)
        self.max_new_tokens = max_new_tokens
        self.prompt = _text_box("edit prompt x*", "The Eiffel Tower is located in the city of")
        self.target = _text_box("new target y*", "Rome")
        self.subject: w.Text | None = None  # a subclass whose editor reads the subject adds the box
        self.query = _text_box("query", "Where is the Eiffel Tower? It is in the city of")
        self.add = _button("Add edit", "insert into the store", "primary")
        self.ask = _button("Ask", "retrieve for the query, then generate")
        self.reset = _button("Reset", "empty the store", "warning")
        self.remove_id = w.Text(placeholder=f"case id, e.g. {self.id_prefix}-1", description="remove",
                                layout=w.Layout(width="300px"))
        self.remove = _button("Remove", "delete this edit from the store")
        self.seen = w.HTML()  # the exact input the model received, and its answer
        for button, fn in ((self.add, self.on_add), (self.ask, self.on_ask), (self.reset, self.on_reset),
                           (self.remove, self.on_remove)):
            button.on_click(fn)
        _on_enter(self.on_add, self.prompt, self.target)
        _on_enter(self.on_ask, self.query)
        _on_enter(self.on_remove, self.remove_id)

    def _layout(self, controls: list[w.Widget]) -> None:
        typed = [self.prompt, self.target] + ([self.subject] if self.subject is not None else [])
        self.widget = w.VBox([*typed, w.HBox([self.add]), self.query, *controls,
                              w.HBox([self.ask, self.reset]), w.HBox([self.remove_id, self.remove]),
                              self.stored, self.message, self.seen, self.out])

    def _outdated(self) -> None:
        # what retrieval found for the last query was found among other edits: ask again
        self.seen.value = ""
        self.table, self.figure, self.out.outputs = None, None, ()

    @guarded
    def on_add(self, _button=None) -> None:
        case = new_edit(self.editor, self.prompt.value, self.target.value, self._next_id(),
                        "" if self.subject is None else self.subject.value.strip())
        (info,) = self.editor.edit(case)
        self.say(f"{case.case_id} stored: \"{case.descriptor}\" ({info['edit_s'] * 1000:.1f} ms; "
                 f"{plural(len(self.editor.cases), 'edit')} stored). No weights changed.", "ok")

    @guarded
    def on_ask(self, _button=None) -> None:
        query = self.query.value.strip()
        if not query:
            raise ValueError("the query is empty: type a question or a sentence to complete")
        check_length(self.editor.tokenizer, "query", query)
        self.say("retrieving and generating…", "busy")
        start = time.perf_counter()
        status = self._answer(query)
        self.say(f"{status} [{time.perf_counter() - start:.1f} s]", "ok")

    def _answer(self, query: str) -> str:
        """Retrieve, generate, show; return the status line."""
        raise NotImplementedError

    def _answers(self, query: str, acting: str | None, alone: str, untouched: str) -> dict[str, str]:
        """The editor's answer labelled `acting` beside the unedited model's (`alone`) when the
        editor acts on the query; else the unedited answer alone, labelled `untouched`."""
        with self.editor.unedited():
            plain = self.editor.generate(query, self.max_new_tokens)
        if not acting:
            return {untouched: plain}
        return {acting: self.editor.generate(query, self.max_new_tokens), alone: plain}

    def _seen(self, model_input: str, answers: dict[str, str]) -> None:
        self.seen.value = (f"<b>the model received</b><pre>{html.escape(model_input)}</pre>"
                           + "".join(f"<b>{html.escape(k)}</b><pre>{html.escape(v)}</pre>" for k, v in answers.items()))

    @guarded
    def on_reset(self, _button=None) -> None:
        self.editor.reset()
        self.seen.value = ""
        self.show(self._empty_table(), None)
        self.say("store emptied: the model is back to its original outputs", "ok")

    def _empty_table(self) -> pd.DataFrame:
        raise NotImplementedError

    @guarded
    def on_remove(self, _button=None) -> None:
        case_id = self.remove_id.value.strip()
        self.editor.remove(case_id)
        self.say(f"removed {case_id}; {plural(len(self.editor.cases), 'edit')} left in the store", "ok")


class LTEPanel(StorePanel):
    """Fill an LTE memory, ask a query, and see what was retrieved, the exact prompt, and the answer.

    Edits stay in the memory until "Reset". The k slider changes how many descriptors each query
    gets, which is LTE's one inference-time knob (the paper uses k = 3).
    """

    id_prefix = "lte"

    def __init__(self, editor, max_new_tokens: int = 12) -> None:
        super().__init__(editor, max_new_tokens)
        self.k = w.IntSlider(value=editor.k, min=1, max=5, description="top-k",
                             style={"description_width": "160px"}, layout=_slider_layout())
        self.k.observe(self.on_k, names="value")
        self._layout([self.k])
        self.say(f"memory: {plural(len(editor.cases), 'edit')}; {'aligned' if editor.aligned else 'unaligned'} model. "
                 "Add edits, then ask a query.")

    def _answer(self, query: str) -> str:
        info = self.editor.inspect(query)
        self._seen(info["model_input"], {"and answered": self.editor.generate(query, self.max_new_tokens)})
        table = retrieval_table(info)
        self.show(table, viz.retrieval_bars(info["retrieved"], self.editor.memory.metric) if len(table) else None)
        return (f"top-{len(table)} of {plural(info['memory_size'], 'edit')} retrieved" if len(table) else
                "the memory is empty, so the query went in alone (and the adapter stayed off)")

    def _empty_table(self) -> pd.DataFrame:
        return retrieval_table({"retrieved": []})

    @guarded
    def on_k(self, change: dict) -> None:
        self.editor.k = int(change["new"])
        self.say(f"k = {self.editor.k}: each query now gets the top {self.editor.k} descriptors", "info")


def knowledge_table(info: dict) -> pd.DataFrame:
    """`RECIPE.inspect(prompt)["knowledge"]` as a table, best first, with the gate and the decision."""
    rows = info["knowledge"]
    return pd.DataFrame({"rank": range(1, len(rows) + 1), "case_id": [r["case_id"] for r in rows],
                         "knowledge": [r["knowledge"] for r in rows], "score": [round(r["score"], 3) for r in rows],
                         "beats the gate": [r["score"] > info["threshold"] for r in rows],
                         "attached": [r["case_id"] == info["retrieved"] for r in rows]})


class RECIPEPanel(StorePanel):
    """Store knowledge in a RECIPE editor, ask a query, and see its similarity to every stored entry,
    the line it must beat (the Knowledge Sentinel, or a fixed threshold you set), the decision, and
    the answer with and without the attached continuous prompt."""

    id_prefix = "recipe"

    def __init__(self, editor, max_new_tokens: int = 12) -> None:
        super().__init__(editor, max_new_tokens)
        self.gate = w.ToggleButtons(options=["sentinel", "fixed threshold"],
                                    value="sentinel" if editor.use_sentinel else "fixed threshold",
                                    description="gate", style={"description_width": "160px"})
        self.threshold = w.FloatSlider(value=editor.threshold, min=-5.0, max=15.0, step=0.1,
                                       description="threshold", disabled=editor.use_sentinel,
                                       style={"description_width": "160px"}, continuous_update=False,
                                       layout=_slider_layout())
        self.until = w.Checkbox(value=editor.until_answer, indent=False, layout=w.Layout(width="auto"),  # whole label
                                description="drop the prompt once the answer is said (not in the paper)")
        self.statement = w.ToggleButtons(options=[("vectors alone", False), ("+ text if long", "long"),
                                                  ("+ text always", True)], value=editor.statement,
                                         description="knowledge as text", style={"description_width": "160px"},
                                         tooltips=["the paper's prompt", "the statement before the vectors where "
                                                   "the new answer is over three tokens (not in the paper)",
                                                   "the statement before every attached prompt's vectors (not in the paper)"])
        self.subject = _text_box("subject", placeholder="as the prompt writes it, e.g. Eiffel Tower (read by the "
                                                        "relation check)")
        _on_enter(self.on_add, self.subject)
        self.relation = w.Checkbox(value=editor.relation_check, indent=False, layout=w.Layout(width="auto"),
                                   description="relation check: a query naming a stored subject must ask the same "
                                               "relation (not in the paper)")
        self.gate.observe(self.on_gate, names="value")
        self.threshold.observe(self.on_gate, names="value")
        self.until.observe(self.on_until, names="value")
        self.statement.observe(self.on_statement, names="value")
        self.relation.observe(self.on_relation, names="value")
        self._layout([w.HBox([self.gate]), self.threshold, self.relation, w.HBox([self.statement]), self.until])
        self.say(f"{plural(len(editor.cases), 'edit')} stored; the LLM's weights are frozen. Add knowledge, then ask a query.")

    def _answer(self, query: str) -> str:
        info = self.editor.inspect(query)
        attached = info["attached"]
        self._seen(info["llm_input"], self._answers(query, attached and f"answered with the prompt of {attached}",
                                                    "without it", "answered (no prompt attached: the unedited model)"))
        self.show(knowledge_table(info), viz.sentinel_bars(info) if info["knowledge"] else None)
        if not info["knowledge"]:
            return "nothing stored yet, so nothing to retrieve: the query went in alone"
        gate = f"the sentinel's {info['sentinel']:.2f}" if info["gate"] == "sentinel" else f"the threshold {info['threshold']:.2f}"
        best = info["knowledge"][0]
        verdict = (f"attached {attached}'s {len(info['prompt_norms'])} prompt vectors" if attached else
                   "nothing attached" + ("" if self.editor.use_prompts else " (prompts are switched off)"))
        if info["relation"] is not None:  # the query names a stored subject: its relation decided
            return (f"the query names a stored subject; the relation check gives {info['relation']:.2f} against "
                    f"{self.editor.relation.config.threshold:.2f}: {verdict}")
        return f"best match {best['case_id']} scores {best['score']:.2f} against {gate}: {verdict}"

    def _empty_table(self) -> pd.DataFrame:
        return knowledge_table({"knowledge": [], "threshold": 0.0, "retrieved": None})

    @guarded
    def on_gate(self, _change=None) -> None:
        self.editor.use_sentinel = self.gate.value == "sentinel"
        self.threshold.disabled = self.editor.use_sentinel
        self.editor.threshold = self.threshold.value
        self.say("the Knowledge Sentinel decides: attach only if the best match beats r~q·rΘ" if self.editor.use_sentinel
                 else f"a fixed threshold decides: attach if the best match scores above {self.editor.threshold:.2f}", "info")

    @guarded
    def on_relation(self, _change=None) -> None:
        self.editor.relation_check = self.relation.value
        self.say("a query that names a stored subject gets its prompt only if it asks the same relation"
                 if self.relation.value else "the gate alone decides", "info")

    @guarded
    def on_until(self, _change=None) -> None:
        self.editor.until_answer = self.until.value
        self.say("generation drops the prompt once it has said the new answer, and the model writes on from the words"
                 if self.until.value else "the prompt stays attached to the end of every generation", "info")

    @guarded
    def on_statement(self, _change=None) -> None:
        self.editor.statement = self.statement.value
        self.say({False: "an attached prompt is its vectors alone, as in the paper",
                  "long": "an attached prompt brings its knowledge as text too where the new answer is over three "
                          "tokens, too long for six vectors to say",
                  True: "an attached prompt now brings its knowledge as text too: the model can copy a long answer "
                        "from it"}[self.statement.value], "info")


def scope_table(info: dict) -> pd.DataFrame:
    """`SERAC.inspect(prompt)["scope"]` as a table, most likely first, with the threshold's verdict."""
    rows = info["scope"]
    return pd.DataFrame({"rank": range(1, len(rows) + 1), "case_id": [r["case_id"] for r in rows],
                         "edit": [r["edit"] for r in rows], "probability": [round(r["probability"], 3) for r in rows],
                         "above the threshold": [r["probability"] > info["threshold"] for r in rows],
                         "in scope": [r["case_id"] == info["in_scope"] for r in rows]})


class SERACPanel(StorePanel):
    """Store edits in a SERAC editor, ask a query, and see the scope classifier's probability for
    every stored edit, the threshold, which model answered, and the answer beside the base model's."""

    id_prefix = "serac"

    def __init__(self, editor, max_new_tokens: int = 12) -> None:
        super().__init__(editor, max_new_tokens)
        self.threshold = w.FloatSlider(value=editor.threshold, min=0.0, max=1.0, step=0.05, description="threshold",
                                       style={"description_width": "160px"}, continuous_update=False,
                                       layout=_slider_layout())
        self.threshold.observe(self.on_threshold, names="value")
        self._layout([self.threshold])
        self.say(f"{plural(len(editor.cases), 'edit')} stored; the base model's weights are frozen. Add edits, then ask a query.")

    def _answer(self, query: str) -> str:
        info = self.editor.inspect(query)
        self._seen(info["model_input"], self._answers(query, info["in_scope"] and f"answered by the {info['answered_by']}",
                                                      "the base model alone", "answered by the base model"))
        self.show(scope_table(info), viz.scope_bars(info) if info["scope"] else None)
        if not info["scope"]:
            return "nothing stored yet: the base model answered"
        best = info["scope"][0]
        verdict = f"in scope: {info['answered_by']}" if info["in_scope"] else "out of scope: the base model answered"
        return f"most likely edit {best['case_id']}, p = {best['probability']:.2f} against {info['threshold']:.2f}: {verdict}"

    def _empty_table(self) -> pd.DataFrame:
        return scope_table({"scope": [], "threshold": 0.5, "in_scope": None})

    @guarded
    def on_threshold(self, _change=None) -> None:
        self.editor.threshold = self.threshold.value
        self.say(f"an edit applies when its scope probability is above {self.editor.threshold:.2f}", "info")


def strongest_states(t, n: int = 5) -> pd.DataFrame:
    """The n (token, layer) states whose restoration recovers the most of p(answer), best first."""
    order = t.scores.ravel().argsort()[::-1][:n]
    gap = max(t.p_clean - t.p_corrupt, 1e-9)
    rows = [divmod(int(i), t.scores.shape[1]) for i in order]
    start, end = t.subject_range
    return pd.DataFrame({"token": [f"{i}: {t.tokens[i]!r}" for i, _ in rows], "layer": [l for _, l in rows],
                         "in subject": [start <= i < end for i, _ in rows],
                         "p restored": [round(float(t.scores[i, l]), 3) for i, l in rows],
                         "share of the gap recovered": [round(float((t.scores[i, l] - t.p_corrupt) / gap), 2)
                                                        for i, l in rows]})


class TracePanel(Panel):
    """Causal tracing for a prompt you type (notebook 02): corrupt the subject, restore one state at a
    time, and see the heatmap of the recovered probability, with the strongest states as a table."""

    def __init__(self, model, tokenizer, prompt: str = "The Eiffel Tower is located in the city of",
                 subject: str = "Eiffel Tower", samples: int = 10) -> None:
        from . import tracing
        super().__init__()
        self.model, self.tokenizer, self.samples, self.trace = model, tokenizer, samples, None
        self.prompt = _text_box("prompt", prompt)
        self.subject = _text_box("subject (in the prompt)", subject)
        self.target = _text_box("answer to trace", "", "empty: the model's own next token")
        self.kind = w.ToggleButtons(options=list(tracing.KINDS), value="hidden", description="state",
                                    style={"description_width": "160px"})
        self.button = _button("trace", "corrupt the subject, restore one state at a time", "primary")
        self.button.on_click(lambda _b: self.on_trace())
        _on_enter(self.on_trace, self.prompt, self.subject, self.target)
        self.widget = w.VBox([self.prompt, self.subject, self.target, self.kind, self.button, self.message, self.out])
        self.say("type a prompt and its subject, then trace (about 20 s per trace on 2 CPU cores)")

    @guarded
    def on_trace(self) -> None:
        from .tracing import trace
        check_length(self.tokenizer, "prompt", self.prompt.value, limit=40)
        self.say("tracing: one corrupted batch per layer ...", "busy")
        start = time.perf_counter()
        t = trace(self.model, self.tokenizer, self.prompt.value, self.subject.value,
                  target=self.target.value.strip() or None, kind=self.kind.value, samples=self.samples, progress=False)
        self.trace = t
        self.show(strongest_states(t), viz.trace_heatmap(t))
        top = strongest_states(t, 1).iloc[0]
        self.say(f"traced {t.target.strip()!r} in {time.perf_counter() - start:.1f} s: clean p = {t.p_clean:.3f}, "
                 f"corrupted {t.p_corrupt:.3f}; the strongest state is token {top['token']} at layer {top['layer']} "
                 f"({top['share of the gap recovered']:.0%} of the gap)", "ok")
