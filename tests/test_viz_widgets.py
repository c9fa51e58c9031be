"""Figures and tables from synthetic results, and the EditPlayground driven headlessly.

Panels are driven the way a student drives them (set `.value`, `.click()`) and judged by their
state: `table`, `figure`, `message`, `level`. Every bad input must end in a visible message, never
an exception. The tiny random model makes these fast; one `real` test checks that an ICE edit made
through the panel lands on the real Gemma-3-270M.
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import pytest

from kedit_teach import viz
from kedit_teach.widgets import EditPlayground, Panel, guarded

PROTOCOLS = ("teacher_forced", "teacher_forced_exact", "generation")


def fake_result(method: str, reliability: float) -> dict:
    """The shape evaluate() returns, with no portability probes (None)."""
    metrics = {p: {"reliability": reliability, "generality": 0.5, "locality": 1.0, "portability": None,
                   "locality_gt": 0.75} for p in PROTOCOLS}
    metrics["generation"]["reliability"] = reliability / 2
    probe = {"case_id": "c1", "kind": "reliability", "prompt": "p", "target": "t", "generated": "g",
             "teacher_forced": reliability, "teacher_forced_exact": reliability, "generation": 0.0}
    return {"method": method, "n": 4, "mode": "single", "metrics": metrics,
            "fluency": {"x100": 550.0}, "timing": {"edit_s_mean": 0.5, "infer_s_mean": 0.01, "total_s": 3.0},
            "per_case": [{"case_id": "c1", "edit_s": 0.5, "probes": [probe]}]}


RESULTS = {"noedit": fake_result("noedit", 0.0), "ice": fake_result("ice", 1.0)}


def bars(fig: go.Figure, **meta) -> list:
    return [t for t in fig.data if all(t.meta.get(k) == v for k, v in meta.items())]


def test_metrics_bar_has_one_labelled_subplot_per_protocol_and_gaps_for_none():
    fig = viz.metrics_bar(RESULTS)
    assert [a.text for a in fig.layout.annotations] == [viz.LABELS[p] for p in PROTOCOLS]
    assert len(fig.data) == 6 and {t.name for t in fig.data} == {"noedit", "ice"}
    assert sum(t.showlegend for t in fig.data) == 2  # each method once in the legend
    (ice_gen,) = bars(fig, method="ice", protocol="generation")
    values = dict(zip(ice_gen.x, ice_gen.y))
    assert values["reliability"] == 0.5 and values["locality (vs answer)"] == 0.75
    assert values["portability"] is None
    assert fig.layout.title.text == "noedit vs ice (n=4, single edits)"


def test_scores_and_cost_tables():
    table = viz.scores_table(RESULTS)
    assert list(table.index) == [(p, m) for p in PROTOCOLS for m in ("noedit", "ice")]
    assert list(table.columns) == list(viz.KINDS)
    assert table.loc[("generation", "ice"), "reliability"] == 0.5
    assert pd.isna(table.loc[("teacher_forced", "ice"), "portability"])
    costs = viz.cost_table(RESULTS)
    assert costs.loc["ice", "fluency_x100"] == 550.0 and costs.loc["noedit", "edit_s"] == 0.5
    probes = viz.probes_table(RESULTS["ice"])
    assert list(probes.columns) == ["case_id", "kind", "prompt", "target", "generated", *PROTOCOLS]


ROWS = [{"method": m, "kind": k, "prompt": f"{k} prompt", "target": "t",
         "before": {p: 0.0 for p in PROTOCOLS}, "after": {p: after for p in PROTOCOLS},
         "generated_before": "x", "generated_after": "y"}
        for m, after in (("noedit", 0.0), ("ice", 1.0)) for k in ("reliability", "generality")]
ROWS.append({**ROWS[-1], "prompt": "another rephrasing", "after": {p: 0.0 for p in PROTOCOLS}})


def test_before_after_figure_averages_probes_of_a_kind():
    fig = viz.before_after(ROWS)
    assert {t.name for t in fig.data} == {"before edit", "after edit"}
    assert len(fig.data) == 2 * 2 * 2  # 2 protocols x 2 methods x (before, after)
    (after,) = bars(fig, method="ice", protocol="teacher_forced", stage="after")
    assert dict(zip(after.x, after.y)) == {"reliability": 1.0, "generality": 0.5}
    assert not bars(fig, protocol="teacher_forced_exact")
    table = viz.before_after_table(ROWS)
    assert len(table) == len(ROWS) and table["teacher_forced after"].tolist()[-1] == 0.0


# ----------------------------------------------------------------------------- panels

@pytest.fixture
def playground(gemma_tiny):
    panel = EditPlayground(*gemma_tiny)
    panel.prompt.value = "The Eiffel Tower is located in the city of"
    panel.target.value = "Rome"
    panel.rephrase.value = "The Eiffel Tower is in"
    panel.locality_prompt.value = "The capital of Japan is"
    panel.locality_answer.value = "Tokyo"
    return panel


def test_add_edit_shows_table_and_figure_and_leaves_editors_reset(playground):
    playground.add.click()
    assert playground.level == "ok" and "playground-1 done" in playground.message.value
    table = playground.table
    assert table["method"].unique().tolist() == ["noedit", "ice", "ft-l"]
    assert table[table.method == "ice"]["kind"].tolist() == ["reliability", "generality", "locality",
                                                             "locality_gt"]
    noedit = table[table.method == "noedit"]
    assert (noedit["teacher_forced before"] == noedit["teacher_forced after"]).all()
    assert (table[table.kind == "locality"]["teacher_forced before"] == 1.0).all()
    fig = playground.figure
    assert len(fig.data) == 3 * 2 * 2  # methods x protocols x (before, after)
    (bar,) = bars(fig, method="ft-l", protocol="generation", stage="after")
    row = table[(table.method == "ft-l") & (table.kind == "reliability")]
    assert bar.y[0] == row["generation after"].item()
    assert all(not e.cases for e in playground.editors.values())
    assert not playground.add.disabled


def test_case_ids_are_unique_per_click(playground):
    playground.add.click()
    playground.target.value = "Berlin"
    playground.add.click()
    assert [c.case_id for c, _ in playground.history] == ["playground-1", "playground-2"]


def test_blank_locality_answer_scores_against_the_unedited_model(playground):
    playground.locality_answer.value = ""
    playground.add.click()
    assert playground.level == "ok"
    table = playground.table
    assert "locality_gt" not in set(table["kind"])
    said = playground.editors["noedit"].generate("The capital of Japan is", 5).strip().split("\n")[0].strip()
    assert set(table[table.kind == "locality"]["target"]) == {said}


def test_unicode_edit_is_shown(playground):
    playground.prompt.value = "Der Eiffelturm steht in"
    playground.target.value = "Zürich 🗼"
    playground.add.click()
    assert playground.level == "ok"
    assert set(playground.table[playground.table.kind == "reliability"]["target"]) == {"Zürich 🗼"}


@pytest.mark.parametrize("box, value, expected", [
    ("prompt", "", "'prompt' is empty"),
    ("prompt", "   ", "'prompt' is empty"),
    ("target", "", "'target_new' is empty"),
    ("prompt", "Paris " * 400, "edit prompt is"),
    ("locality_prompt", "Rome " * 400, "locality prompt is"),
    ("locality_prompt", "", "'locality' item 0 prompt is empty"),  # an answer without its prompt
])
def test_bad_input_gives_a_visible_message(playground, box, value, expected):
    getattr(playground, box).value = value
    playground.add.click()  # must not raise
    assert playground.level == "error" and expected in playground.message.value.replace("&#x27;", "'")
    assert playground.history == [] and playground.figure is None
    assert not playground.add.disabled


def test_duplicate_edit_gives_a_visible_message(playground):
    playground.add.click()
    figure = playground.figure
    playground.add.click()
    assert playground.level == "error" and "already added as playground-1" in playground.message.value
    assert len(playground.history) == 1 and playground.figure is figure


def test_an_editor_failure_is_shown_escaped_and_the_editors_are_reset(playground, monkeypatch):
    ice = playground.editors["ice"]

    def broken(case):
        ice.cases[case.case_id] = case  # half-applied, as a crash mid-edit would leave it
        raise RuntimeError("<boom>")
    monkeypatch.setattr(ice, "edit", broken)
    playground.add.click()
    assert playground.level == "error"
    assert "RuntimeError: &lt;boom&gt;" in playground.message.value
    assert not ice.cases and not playground.add.disabled


def test_guarded_shows_key_errors_without_quotes():
    class Remover(Panel):
        @guarded
        def remove(self, case_id):
            raise KeyError(f"no edit with case_id {case_id!r} to remove")
    panel = Remover()
    panel.remove("x")
    assert panel.level == "error"
    assert panel.message.value.endswith("KeyError: no edit with case_id &#x27;x&#x27; to remove</span>")


def test_show_keeps_the_latest_table_and_figure():
    panel, table, fig = Panel(), pd.DataFrame({"a": [1]}), go.Figure()
    panel.show(table, fig)
    assert panel.table is table and panel.figure is fig


@pytest.mark.real
def test_ice_edit_through_the_playground_is_reliable_on_the_real_model(real):
    panel = EditPlayground(*real, methods=("noedit", "ice"))
    panel.prompt.value = "The Eiffel Tower is located in the city of"
    panel.target.value = "Rome"
    panel.add.click()
    assert panel.level == "ok", panel.message.value
    rel = panel.table[panel.table.kind == "reliability"].set_index("method")
    assert rel.loc["ice", "teacher_forced after"] == 1.0
    assert rel.loc["noedit", "teacher_forced after"] == rel.loc["noedit", "teacher_forced before"] < 1.0
