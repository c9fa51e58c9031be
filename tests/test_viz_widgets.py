"""Figures and tables from synthetic results, and the EditPlayground, GracePanel, LTEPanel, RECIPEPanel, SERACPanel
and TracePanel driven headlessly.

Panels are driven the way a student drives them (set `.value`, `.click()`) and judged by their
state: `table`, `figure`, `message`, `level`. Every bad input must end in a visible message, never
an exception. The tiny random model makes these fast; one `real` test checks that an ICE edit made
through the panel lands on the real Gemma-3-270M.
"""
from __future__ import annotations

import html
import inspect
import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from kedit_teach import viz, widgets
from kedit_teach.data import EditCase
from kedit_teach.editors import GRACE
from kedit_teach.metrics import same_answer
from kedit_teach.tour import probes as arena_probes
from kedit_teach.widgets import (ArenaPanel, EditPlayground, GracePanel, LTEPanel, Panel, RECIPEPanel, SERACPanel, TracePanel, describe_decision,
                                 guarded, key_distances, keys_of, strongest_states)

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
    # facets named once each: methods over the columns, protocols as the rows' y titles
    assert [a.text for a in fig.layout.annotations] == ["noedit", "ice"]
    assert fig.layout.yaxis.title.text == "teacher-forced<br>token accuracy"
    assert fig.layout.yaxis3.title.text == "generation<br>greedy generate()"
    assert "locality<br>(unchanged)" in viz.metrics_bar(RESULTS).layout.xaxis.ticktext
    table = viz.before_after_table(ROWS)
    assert len(table) == len(ROWS) and table["token accuracy", "after"].tolist()[-1] == 0.0
    # answers right after the target and the prompt, the widest column, last: no scrolling to the answers
    assert list(table.columns[:3]) == [("target", ""), ("answer", "before"), ("answer", "after")]
    assert table.columns[-1] == ("prompt", "") and table.index.names == ["method", "kind"]
    assert table.loc[("ice", "generality"), ("prompt", "")].tolist() == ["generality prompt", "another rephrasing"]


def test_next_token_bars_show_spaces_and_rank():
    fig = viz.next_token_bars([(" Paris", 0.6), ("Paris", 0.1), (" the", 0.05)], "The Eiffel Tower is in")
    (bar,) = fig.data
    assert list(bar.x) == ["1. ␣Paris", "2. Paris", "3. ␣the"] and list(bar.y) == [0.6, 0.1, 0.05]
    assert "The Eiffel Tower is in" in fig.layout.title.text and fig.layout.yaxis.title.text == "probability"


# ----------------------------------------------------------------------------- panels

def test_every_panel_in_the_package_is_driven_in_this_file():
    # a new panel (RECIPE's, the benchmark's) must come with headless tests here, which
    # test_widgets_colab.py then reruns under ipywidgets 7.7.1
    # (a shell that other panels are built on, such as StorePanel, is driven through them)
    panels = [c.__name__ for _, c in inspect.getmembers(widgets, inspect.isclass)
              if issubclass(c, Panel) and c is not Panel and not c.__subclasses__()]
    source = Path(__file__).read_text(encoding="utf-8")
    assert len(panels) >= 4 and [p for p in panels if f"{p}(" not in source] == []


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
    assert table.index.unique("method").tolist() == ["noedit", "ice", "ft-l"]
    assert table.loc["ice"].index.tolist() == ["reliability", "generality", "locality", "locality_gt"]
    noedit = table.loc["noedit"]
    assert (noedit["token accuracy", "before"] == noedit["token accuracy", "after"]).all()
    assert (table.xs("locality", level="kind")["token accuracy", "before"] == 1.0).all()
    fig = playground.figure
    assert len(fig.data) == 3 * 2 * 2  # methods x protocols x (before, after)
    (bar,) = bars(fig, method="ft-l", protocol="generation", stage="after")
    assert bar.y[0] == table.loc[("ft-l", "reliability"), ("generation", "after")]
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
    assert "locality_gt" not in table.index.unique("kind")
    said = playground.editors["noedit"].generate("The capital of Japan is", 5).strip().split("\n")[0].strip()
    assert set(table.xs("locality", level="kind")["target"]) == {said}


def test_unicode_edit_is_shown(playground):
    playground.prompt.value = "Der Eiffelturm steht in"
    playground.target.value = "Zürich 🗼"
    playground.add.click()
    assert playground.level == "ok"
    assert set(playground.table.xs("reliability", level="kind")["target"]) == {"Zürich 🗼"}


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


def test_show_keeps_the_latest_table_and_figure_and_replaces_the_output():
    panel, table, fig = Panel(), pd.DataFrame({"a": [1]}), go.Figure(go.Bar(x=["a"], y=[np.float32(0.5)]))
    panel.show(table, fig)
    assert panel.table is table and panel.figure is fig
    assert len(panel.out.outputs) == 2 and "text/html" in panel.out.outputs[0]["data"]
    # the figure itself, not the empty bundle a go.Figure gives IPython's formatter
    plotly_json = panel.out.outputs[1]["data"]["application/vnd.plotly.v1+json"]
    assert plotly_json["data"][0]["y"] == [0.5]
    panel.show(table, None)  # nothing to draw: only the table
    assert panel.figure is None and len(panel.out.outputs) == 1


# ----------------------------------------------------------------------------- GRACE figures

DIST_ROWS = [
    {"group": "edit prompt", "prompt": "Eiffel", "distance": 0.0, "eps": 1.0, "entry": 0, "fired": 0},
    {"group": "rephrasings", "prompt": "Eiffel again", "distance": 0.7, "eps": 1.0, "entry": 0, "fired": 0},
    {"group": "rephrasings", "prompt": "Where is the Eiffel Tower, the tall iron one", "distance": 1.7,
     "eps": 1.0, "entry": 0, "fired": None},
    {"group": "locality", "prompt": "Eiffel", "distance": 2.2, "eps": 0.5, "entry": 1, "fired": None},
]


def test_distances_vs_radii_has_a_bar_per_query_and_a_radius_mark():
    fig = viz.distances_vs_radii(DIST_ROWS)
    assert [t.meta["group"] for t in fig.data if t.type == "bar"] == ["edit prompt", "rephrasings", "locality"]
    (rephrasings,) = bars(fig, group="rephrasings")
    reph = dict(zip(rephrasings.x, rephrasings.y))
    labels = list(rephrasings.x)  # every trace spans every query; the other groups' are gaps
    assert len(labels) == 4 and labels[0] != labels[3]  # the same prompt twice stays two bars
    assert labels[1].endswith("(hit)") and labels[2].endswith("(miss)") and "…" in labels[2]
    assert (reph[labels[1]], reph[labels[2]], reph[labels[0]]) == (0.7, 1.7, None)
    (radius,) = bars(fig, radius=True)
    assert list(radius.x) == labels and list(radius.y) == [1.0, 1.0, 1.0, 0.5]
    assert fig.layout.yaxis.title.text == "distance to the entry's key"
    assert fig.layout.xaxis.title.text.startswith("query")


def test_pca_projects_new_points_with_the_same_plane():
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(5, 8))
    coords, project = viz.pca_2d(keys)
    assert coords.shape == (5, 2)
    np.testing.assert_allclose(project(keys[2]), coords[2:3])  # an identical key lands on its point
    np.testing.assert_allclose(coords.mean(0), 0, atol=1e-12)
    query = rng.normal(size=8)
    # orthogonal: projected distances never exceed the true ones
    assert np.linalg.norm(project(query) - coords, axis=1).max() <= np.linalg.norm(keys - query, axis=1).max()
    line, _ = viz.pca_2d([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])  # spread along one direction only
    np.testing.assert_allclose(line, [[-1.0, 0.0], [1.0, 0.0]], atol=1e-12)


def test_codebook_projection_draws_radii_and_marks_queries_hit_or_miss():
    keys = np.array([[0.0, 0, 0, 0], [3, 0, 0, 0], [0, 3, 0, 0]])
    eps = [1.0, 0.5, 0.5]
    queries = [{"prompt": "near 0", "key": [0.5, 0, 0, 0], "group": "rephrasings"},
               {"prompt": "off-plane", "key": [0, 0, 0, 2.0], "group": "rephrasings"},
               {"prompt": "same as 1", "key": keys[1], "group": "locality"}]
    fig = viz.codebook_projection(keys, eps, ["a", "b", "c"], queries)
    assert len(fig.layout.shapes) == 3 and {s.type for s in fig.layout.shapes} == {"circle"}
    circle = fig.layout.shapes[0]
    assert circle.x1 - circle.x0 == pytest.approx(2.0) and circle.y1 - circle.y0 == pytest.approx(2.0)
    (key_trace,) = [t for t in fig.data if t.meta == {"keys": True}]
    traces = {t.name: t for t in fig.data if "group" in (t.meta or {})}
    assert set(traces) == {"rephrasings: hit", "rephrasings: miss", "locality: hit"}
    assert traces["rephrasings: miss"].text == ("off-plane",)
    # the off-plane query is drawn at the keys' centre, inside no circle's true reach: a miss
    (same,) = zip(traces["locality: hit"].x, traces["locality: hit"].y)
    assert same == pytest.approx((key_trace.x[1], key_trace.y[1]))
    assert "not drawn" in fig.layout.title.text and fig.layout.yaxis.scaleanchor == "x"
    with pytest.raises(ValueError, match="empty"):
        viz.codebook_projection(np.zeros((0, 4)), [], [], queries)


def test_codebook_projection_with_one_key_fits_the_plane_with_the_queries():
    fig = viz.codebook_projection([[1.0, 1.0, 1.0]], [0.5], ["a"],
                                  [{"prompt": "q", "key": [1.0, 2.0, 1.0]}, {"prompt": "r", "key": [3.0, 1.0, 1.0]}])
    xs = [x for t in fig.data for x in t.x]
    assert len(set(np.round(xs, 6))) == 3  # three distinct points, not all at the origin


CURVE = [{"n_edits": n, "edit_s_mean": 1.0,
          "metrics": {p: {"reliability": 1.0, "generality": g, "locality": 1.0, "portability": None}
                      for p in PROTOCOLS}} for n, g in ((1, 0.5), (5, 0.3), (10, 0.2))]


def test_lifelong_lines_one_subplot_per_protocol_one_line_per_kind():
    fig = viz.lifelong_lines(CURVE)
    assert [a.text for a in fig.layout.annotations] == [viz.LABELS["teacher_forced"], viz.LABELS["generation"]]
    assert len(fig.data) == 2 * 3 and sum(t.showlegend for t in fig.data) == 3
    (gen,) = [t for t in fig.data if t.meta == {"kind": "generality", "protocol": "generation"}]
    assert list(gen.x) == [1, 5, 10] and list(gen.y) == [0.5, 0.3, 0.2]
    assert fig.layout.xaxis.title.text == "number of sequential edits"
    assert "up to 10 edits" in fig.layout.title.text


def test_describe_decision_names_the_rule_and_its_numbers():
    assert describe_decision({"op": "add", "entry": 0}, 1.0).startswith("add: the codebook was empty")
    far = describe_decision({"op": "add", "entry": 1, "d_min": 5.0, "nearest": 0, "nearest_eps": 1.0}, 1.0)
    assert "d_min = 5 to entry 0" in far and "1 + 1 = 2" in far
    expand = describe_decision({"op": "expand", "entry": 0, "d_min": 1.5, "nearest": 0, "nearest_eps": 1.0,
                                "eps": 2.0}, 1.0)
    assert expand.startswith("expand:") and "same answer, so ε_0: 1 → 2" in expand
    split = describe_decision({"op": "split", "entry": 1, "d_min": 1.5, "nearest": 0, "nearest_eps": 2.0,
                               "eps": 0.75, "loss_start": 8.0, "loss_end": 0.01}, 1.0)
    assert split.startswith("split:") and "d_min/2 = 0.75" in split and "loss 8.00 → 0.01" in split


# ----------------------------------------------------------------------------- GracePanel

@pytest.fixture
def grace_panel(gemma_tiny):
    panel = GracePanel(GRACE(*gemma_tiny, n_iter=3, eps_init=1.0))
    panel.prompt.value = "The Eiffel Tower is located in the city of"
    panel.target.value = "Rome"
    panel.probes.value = "The Eiffel Tower is in\n\nThe capital of Japan is\n"
    return panel


def test_grace_panel_add_shows_the_decision_codebook_and_distances(grace_panel):
    grace_panel.add.click()
    assert grace_panel.level == "ok", grace_panel.message.value
    assert "grace-1: add: the codebook was empty" in grace_panel.message.value
    assert len(grace_panel.table) == 1 and grace_panel.table.loc[0, "cases"] == "grace-1"
    (radius,) = [t for t in grace_panel.figure.data if t.meta == {"radius": True}]
    assert list(radius.y) == [1.0] * 3  # the edit prompt and two non-blank probe lines
    edit_bar = next(t for t in grace_panel.figure.data if t.name == "edit prompt")
    assert edit_bar.y[0] == pytest.approx(0.0, abs=1e-4) and edit_bar.x[0].endswith("(hit)")
    grace_panel.add.click()  # the same prompt and target again
    assert grace_panel.level == "error" and "already added as grace-1" in grace_panel.message.value
    assert len(grace_panel.editor.cases) == 1 and not grace_panel.add.disabled
    grace_panel.target.value = "Tokyo"  # same key, another answer: Algorithm 1 splits
    grace_panel.add.click()
    assert "grace-2: split" in grace_panel.message.value and len(grace_panel.table) == 2


def test_grace_panel_slider_sets_eps_init_for_the_next_edits_only(grace_panel):
    grace_panel.add.click()
    grace_panel.eps.value = 5.0
    assert grace_panel.editor.eps_init == pytest.approx(5.0)
    assert "existing entries keep their radii" in grace_panel.message.value
    assert grace_panel.editor.adapter.eps.tolist() == [1.0]
    grace_panel.prompt.value = "The mother tongue of Danielle Darrieux is"  # tiny-model keys: ~0.2 apart
    grace_panel.add.click()
    assert grace_panel.editor.log[-1]["op"] == "expand" and "ε_0: 1 → 6" in grace_panel.message.value


def test_grace_panel_remove_and_reset(grace_panel):
    grace_panel.remove_id.value = "grace-7"
    grace_panel.remove.click()
    assert grace_panel.level == "error" and "no edit with case_id" in grace_panel.message.value
    grace_panel.measure.click()
    assert grace_panel.level == "error" and "codebook is empty" in grace_panel.message.value
    grace_panel.add.click()
    grace_panel.target.value = "Berlin"
    grace_panel.prompt.value = "The capital of Japan is"
    grace_panel.add.click()
    grace_panel.remove_id.value = " grace-1 "
    grace_panel.remove.click()
    assert grace_panel.level == "ok" and list(grace_panel.table["cases"]) == ["grace-2"]
    grace_panel.reset.click()
    assert grace_panel.level == "ok" and grace_panel.table.empty and grace_panel.figure is None
    assert not grace_panel.editor.cases


@pytest.mark.parametrize("box, value, expected", [
    ("prompt", "", "'prompt' is empty"),
    ("target", "  ", "'target_new' is empty"),
    ("prompt", "Paris " * 400, "edit prompt is"),
    ("probes", "ok\n" + "Rome " * 400, "probe prompt is"),
])
def test_grace_panel_bad_input_gives_a_visible_message(grace_panel, box, value, expected):
    getattr(grace_panel, box).value = value
    grace_panel.add.click()  # must not raise
    assert grace_panel.level == "error" and expected in grace_panel.message.value.replace("&#x27;", "'")
    assert not grace_panel.editor.cases and not grace_panel.add.disabled


def test_grace_panel_unicode_and_measure(grace_panel):
    grace_panel.prompt.value = "Der Eiffelturm steht in"
    grace_panel.target.value = "Zürich 🗼"
    grace_panel.add.click()
    assert grace_panel.level == "ok" and grace_panel.table.loc[0, "label"] == "zürich 🗼"
    grace_panel.probes.value = "Где Эйфелева башня?"
    grace_panel.measure.click()
    assert grace_panel.level == "ok" and len(grace_panel.figure.data[0].x) == 2


def test_key_distances_and_keys_of_agree_with_the_codebook(gemma_tiny):
    editor = GRACE(*gemma_tiny, n_iter=2, eps_init=1e-3)
    prompt = "The Eiffel Tower is located in the city of"
    editor.edit(EditCase(case_id="k1", subject="", prompt=prompt, target_new="Rome"))
    (key,) = keys_of(editor, [prompt])
    assert float((key - editor.adapter.keys[0]).norm()) == pytest.approx(0.0, abs=1e-5)
    rows = key_distances(editor, {"edit prompt": [prompt], "other": ["Berlin is in"]})
    assert [r["fired"] for r in rows] == [0, None] and rows[1]["distance"] > 1e-3
    with pytest.raises(ValueError, match="entry 3 does not exist"):
        key_distances(editor, {"x": [prompt]}, entry=3)


@pytest.mark.real
def test_ice_edit_through_the_playground_is_reliable_on_the_real_model(real):
    panel = EditPlayground(*real, methods=("noedit", "ice"))
    panel.prompt.value = "The Eiffel Tower is located in the city of"
    panel.target.value = "Rome"
    panel.add.click()
    assert panel.level == "ok", panel.message.value
    rel = panel.table.xs("reliability", level="kind")["token accuracy"]
    assert rel.loc["ice", "after"] == 1.0
    assert rel.loc["noedit", "after"] == rel.loc["noedit", "before"] < 1.0


# ----------------------------------------------------------------------------- LTE figures and panel

def test_retrieval_bars_in_rank_order_and_scale_by_metric():
    rows = [{"case_id": "a", "descriptor": "The Eiffel Tower is located in Rome", "score": 0.8},
            {"case_id": "b", "descriptor": "Toyota was founded in Germany", "score": 0.1}]
    fig = viz.retrieval_bars(rows)
    assert list(fig.data[0].y) == [0.8, 0.1] and fig.data[0].x[0].startswith("1. The Eiffel")
    assert list(fig.layout.yaxis.range) == [0, 1.05]
    assert viz.retrieval_bars(rows, metric="dot").layout.yaxis.range is None


def test_alignment_mix_and_loss_curve():
    mix = {"examples": 10, "cases": 3, "kind_share": {"in_scope": 0.6, "out_of_scope": 0.3, "free_text": 0.1},
           "distractor_share": {"0": 0.5, "1": 0.25, "2": 0.25}}
    fig = viz.alignment_mix(mix)
    ys = sorted(v for t in fig.data for v in t.y if v is not None)
    assert ys == sorted([0.6, 0.3, 0.1, 0.5, 0.25, 0.25]) and "10 examples" in fig.layout.title.text
    curve = viz.loss_curve([4.0, 2.0, 0.0], window=2)
    assert list(curve.data[1].y) == [4.0, 3.0, 1.0]


@pytest.fixture
def lte_panel(gemma_tiny, encoder):
    from kedit_teach.editors import LTE
    from kedit_teach.memory import VectorMemory
    panel = LTEPanel(LTE(*gemma_tiny, VectorMemory(encoder), k=2, adapter=None), max_new_tokens=3)
    panel.prompt.value, panel.target.value = "The Eiffel Tower is located in the city of", "Rome"
    return panel


def test_lte_panel_add_ask_shows_scores_prompt_and_answer(lte_panel):
    lte_panel.add.click()
    lte_panel.prompt.value, lte_panel.target.value = "Toyota was founded in", "Germany"
    lte_panel.add.click()
    assert lte_panel.level == "ok" and lte_panel.editor.memory.ids == ["lte-1", "lte-2"]
    lte_panel.query.value = "Where is the Eiffel Tower?"
    lte_panel.ask.click()
    assert lte_panel.level == "ok", lte_panel.message.value
    assert list(lte_panel.table["case_id"]) == ["lte-1", "lte-2"]
    assert [round(y, 4) for y in lte_panel.figure.data[0].y] == list(lte_panel.table["score"])
    assert "[Updated Information]" in lte_panel.seen.value and "and answered" in lte_panel.seen.value
    lte_panel.k.value = 1
    lte_panel.ask.click()
    assert len(lte_panel.table) == 1 and lte_panel.editor.k == 1


def test_lte_panel_remove_reset_and_empty_memory(lte_panel):
    lte_panel.ask.click()
    assert lte_panel.level == "ok" and "memory is empty" in lte_panel.message.value
    assert lte_panel.figure is None
    lte_panel.add.click()
    lte_panel.remove_id.value = "lte-9"
    lte_panel.remove.click()
    assert lte_panel.level == "error" and "no edit with case_id" in lte_panel.message.value
    lte_panel.remove_id.value = "lte-1"
    lte_panel.remove.click()
    assert lte_panel.level == "ok" and len(lte_panel.editor.memory) == 0
    lte_panel.add.click()
    lte_panel.reset.click()
    assert lte_panel.level == "ok" and not lte_panel.editor.cases and lte_panel.table.empty


@pytest.mark.parametrize("box, value, expected", [
    ("prompt", "", "'prompt' is empty"),
    ("target", "  ", "'target_new' is empty"),
    ("prompt", "Paris " * 400, "edit prompt is"),
])
def test_lte_panel_bad_edits_give_a_visible_message(lte_panel, box, value, expected):
    getattr(lte_panel, box).value = value
    lte_panel.add.click()
    assert lte_panel.level == "error" and expected in lte_panel.message.value.replace("&#x27;", "'")
    assert not lte_panel.editor.cases


def test_lte_panel_bad_queries_duplicates_and_unicode(lte_panel):
    lte_panel.add.click()
    lte_panel.add.click()
    assert lte_panel.level == "error" and "already added as lte-1" in lte_panel.message.value
    for query, expected in (("   ", "query is empty"), ("Rome " * 400, "query is")):
        lte_panel.query.value = query
        lte_panel.ask.click()
        assert lte_panel.level == "error" and expected in lte_panel.message.value
    lte_panel.prompt.value, lte_panel.target.value = "Der Eiffelturm steht in", "Zürich 🗼"
    lte_panel.add.click()
    lte_panel.query.value = "Wo steht der Eiffelturm?"
    lte_panel.ask.click()
    assert lte_panel.level == "ok" and "Zürich 🗼" in " ".join(lte_panel.table["descriptor"])


# ----------------------------------------------------------------------------- RECIPE

INFO = {"model_input": "Where is the Eiffel Tower?", "gate": "sentinel", "threshold": 1.5, "sentinel": 1.5,
        "retrieved": "r1", "knowledge": [{"case_id": "r1", "knowledge": "The Eiffel Tower is in Rome", "score": 3.0},
                                         {"case_id": "r2", "knowledge": "Toyota was founded in Germany", "score": 0.5}]}


def test_sentinel_bars_mark_the_attached_entry_and_the_gate():
    fig = viz.sentinel_bars(INFO)
    assert [t.meta["case_id"] for t in fig.data] == ["r2", "r1"]  # best on top
    assert [t.meta["attached"] for t in fig.data] == [False, True]
    (line,) = fig.layout.shapes
    assert line.x0 == 1.5 and "sentinel" in fig.layout.annotations[0].text
    assert "attach the prompt of r1" in fig.layout.title.text
    fixed = viz.sentinel_bars({**INFO, "gate": "threshold", "threshold": 4.0, "retrieved": None})
    assert "fixed threshold = 4.00" in fixed.layout.annotations[0].text and "attach nothing" in fixed.layout.title.text


def test_routing_bars_put_both_deciders_side_by_side_in_their_colours():
    fig = viz.routing_bars({"recipe": {"edit prompt": 0.96, "locality": 0.98}, "serac": {"edit prompt": 1.0, "locality": 0.89}})
    (serac,) = bars(fig, method="serac")
    assert list(serac.y) == [1.0, 0.89] and serac.marker.color == viz.METHOD_COLORS["serac"]


def test_gate_sweep_lines_and_loss_curves():
    sweep = {"kinds": ["edit", "unrelated"], "stored": 10, "thresholds": [0.0, 1.0, 2.0],
             "sentinel": {"edit": 0.9, "unrelated": 0.95}, "fixed": {"edit": [1.0, 0.8, 0.2], "unrelated": [0.1, 0.5, 1.0]}}
    fig = viz.gate_sweep_lines(sweep)
    fixed = [t for t in fig.data if t.meta["gate"] == "fixed"]
    assert [list(t.y) for t in fixed] == [[1.0, 0.8, 0.2], [0.1, 0.5, 1.0]]
    assert [t.y[0] for t in fig.data if t.meta["gate"] == "sentinel"] == [0.9, 0.95]
    curves = viz.loss_curves({"total": [9.0, 8.0], "rel": [4.0, 2.0], "so": [1.0, 1.0]}, window=2)
    assert [t.meta["loss"] for t in curves.data] == ["rel", "so"] and list(curves.data[0].y) == [4.0, 3.0]


@pytest.fixture
def recipe_panel(gemma_tiny, encoder):
    from kedit_teach import prompt_learning as pl
    from kedit_teach.editors import RECIPE
    modules = pl.RecipeModules(pl.ModuleConfig.for_model(gemma_tiny[0], d_rep=16), encoder)
    panel = RECIPEPanel(RECIPE(*gemma_tiny, modules=modules), max_new_tokens=3)
    panel.prompt.value, panel.target.value = "The Eiffel Tower is located in the city of", "Rome"
    return panel


def test_recipe_panel_add_ask_shows_scores_gate_and_both_answers(recipe_panel):
    recipe_panel.ask.click()
    assert recipe_panel.level == "ok" and "nothing stored" in recipe_panel.message.value and recipe_panel.figure is None
    recipe_panel.subject.value = "Eiffel Tower"
    recipe_panel.add.click()
    recipe_panel.prompt.value, recipe_panel.target.value = "Toyota was founded in", "Germany"
    recipe_panel.add.click()  # the subject box still says "Eiffel Tower": refused, nothing stored
    assert recipe_panel.level == "error" and "not in the edit prompt" in recipe_panel.message.value
    assert len(recipe_panel.editor.cases) == 1
    recipe_panel.subject.value = "Toyota"
    recipe_panel.add.click()
    assert recipe_panel.level == "ok" and recipe_panel.editor.memory.ids == ["recipe-1", "recipe-2"]
    recipe_panel.gate.value = "fixed threshold"
    recipe_panel.threshold.value = -5.0  # below every score: the best match is attached
    assert not recipe_panel.editor.use_sentinel and recipe_panel.editor.threshold == -5.0
    recipe_panel.ask.click()
    assert recipe_panel.level == "ok", recipe_panel.message.value
    table = recipe_panel.table
    assert list(table["attached"]) == [True, False] and table["beats the gate"].all()
    assert "answered with the prompt of" in recipe_panel.seen.value and "without it" in recipe_panel.seen.value
    assert "[p1][p2][p3]" in recipe_panel.seen.value
    assert "fixed threshold" in recipe_panel.figure.layout.annotations[0].text
    recipe_panel.threshold.value = 15.0  # above every score: nothing attached, the unedited answer
    recipe_panel.ask.click()
    assert "nothing attached" in recipe_panel.message.value and not recipe_panel.table["attached"].any()
    assert "no prompt attached" in recipe_panel.seen.value
    recipe_panel.gate.value = "sentinel"
    assert recipe_panel.editor.use_sentinel and recipe_panel.threshold.disabled
    recipe_panel.ask.click()
    assert "sentinel" in recipe_panel.message.value
    recipe_panel.relation.value = True  # the shipped check: it reads MiniLM's features, whatever the LLM
    assert recipe_panel.editor.relation_check and "same relation" in recipe_panel.message.value
    assert recipe_panel.editor.cases["recipe-1"].subject == "Eiffel Tower"
    recipe_panel.query.value = "The Eiffel Tower was designed by the engineer"
    recipe_panel.ask.click()
    assert "the relation check gives" in recipe_panel.message.value, recipe_panel.message.value
    recipe_panel.relation.value = False
    assert not recipe_panel.editor.relation_check and "the gate alone" in recipe_panel.message.value
    recipe_panel.until.value = True
    assert recipe_panel.editor.until_answer and "drops the prompt" in recipe_panel.message.value
    recipe_panel.until.value = False
    assert not recipe_panel.editor.until_answer and "stays attached" in recipe_panel.message.value
    recipe_panel.statement.value = True  # the attached knowledge's text goes in before its vectors
    assert recipe_panel.editor.statement and "as text too" in recipe_panel.message.value
    recipe_panel.gate.value, recipe_panel.threshold.value = "fixed threshold", -5.0
    recipe_panel.ask.click()
    assert "located in the city of Rome\n[p1]" in recipe_panel.seen.value, recipe_panel.seen.value
    recipe_panel.statement.value = "long"  # " Rome" is one token: six vectors say it alone
    assert recipe_panel.editor.statement == "long" and "over three tokens" in recipe_panel.message.value
    recipe_panel.ask.click()
    assert "\n[p1]" not in recipe_panel.seen.value and "[p1]" in recipe_panel.seen.value, recipe_panel.seen.value
    recipe_panel.statement.value = False
    assert not recipe_panel.editor.statement and "vectors alone" in recipe_panel.message.value


@pytest.fixture
def serac_panel(gemma_tiny, encoder):
    from kedit_teach import scope
    from kedit_teach.editors import SERAC
    panel = SERACPanel(SERAC(*gemma_tiny, classifier=scope.ScopeClassifier(encoder=encoder)), max_new_tokens=3)
    panel.prompt.value, panel.target.value = "The Eiffel Tower is located in the city of", "Rome"
    return panel


def test_serac_panel_shows_scope_probabilities_the_threshold_and_who_answered(serac_panel):
    serac_panel.ask.click()
    assert serac_panel.level == "ok" and "nothing stored" in serac_panel.message.value and serac_panel.figure is None
    serac_panel.add.click()
    serac_panel.prompt.value, serac_panel.target.value = "Toyota was founded in", "Germany"
    serac_panel.add.click()
    assert serac_panel.level == "ok" and serac_panel.editor.memory.ids == ["serac-1", "serac-2"]
    serac_panel.query.value = "The Eiffel Tower is located in the city of"
    serac_panel.ask.click()
    assert serac_panel.level == "ok", serac_panel.message.value
    table = serac_panel.table
    assert list(table["case_id"])[0] == "serac-1" and list(table["in scope"]) == [True, False]
    assert table["probability"].between(0, 1).all() and "in scope: counterfactual" in serac_panel.message.value
    assert "the base model alone" in serac_panel.seen.value and "[Updated Information]" in serac_panel.seen.value
    (bar,) = [t for t in serac_panel.figure.data if t.meta["attached"]]
    assert bar.meta["case_id"] == "serac-1" and "threshold = 0.50" in serac_panel.figure.layout.annotations[0].text
    serac_panel.threshold.value = 1.0  # no probability is above 1: out of scope
    assert serac_panel.editor.threshold == 1.0 and "above 1.00" in serac_panel.message.value
    serac_panel.ask.click()
    assert "out of scope" in serac_panel.message.value and not serac_panel.table["in scope"].any()
    assert "answered by the base model" in serac_panel.seen.value and "[Updated" not in serac_panel.seen.value
    serac_panel.add.click()
    assert serac_panel.level == "error" and "already added as serac-2" in serac_panel.message.value
    serac_panel.reset.click()
    assert serac_panel.editor.memory.ids == [] and len(serac_panel.table) == 0


def test_recipe_panel_remove_reset_and_bad_input(recipe_panel):
    recipe_panel.add.click()
    recipe_panel.add.click()
    assert recipe_panel.level == "error" and "already added as recipe-1" in recipe_panel.message.value
    recipe_panel.remove_id.value = "recipe-7"
    recipe_panel.remove.click()
    assert recipe_panel.level == "error" and "no edit with case_id" in recipe_panel.message.value
    recipe_panel.query.value = "Rome " * 400
    recipe_panel.ask.click()
    assert recipe_panel.level == "error" and "query is" in recipe_panel.message.value
    recipe_panel.prompt.value, recipe_panel.target.value = "Der Eiffelturm steht in", "Zürich 🗼"
    recipe_panel.add.click()
    recipe_panel.query.value = "Wo steht der Eiffelturm?"
    recipe_panel.ask.click()
    assert recipe_panel.level == "ok" and "Zürich 🗼" in " ".join(recipe_panel.table["knowledge"])
    recipe_panel.remove_id.value = "recipe-1"
    recipe_panel.remove.click()
    assert recipe_panel.level == "ok" and recipe_panel.editor.memory.ids == ["recipe-2"]
    recipe_panel.reset.click()
    assert recipe_panel.level == "ok" and not recipe_panel.editor.cases and recipe_panel.table.empty


def test_trace_heatmap_and_the_strongest_states():
    from kedit_teach.tracing import Trace
    scores = np.array([[0.1, 0.1, 0.1], [0.2, 0.9, 0.3], [0.1, 0.4, 0.8]])
    t = Trace("The Eiffel Tower is in", "Eiffel", " Paris", "mlp", 2, ["<bos>", "Eiffel", " is"], (1, 2),
              0.8, 0.1, scores, 1.0)
    fig = viz.trace_heatmap(t)
    (heat,) = fig.data
    assert list(heat.y) == ["0: '<bos>'", "1: 'Eiffel'*", "2: ' is'"] and heat.zmin == 0.1 and heat.zmax == 0.9
    assert "2 layers restored together" in fig.layout.title.text and "clean p = 0.800" in fig.layout.title.text
    table = strongest_states(t, 2)
    assert list(table["layer"]) == [1, 2] and list(table["in subject"]) == [True, False]
    assert list(table["share of the gap recovered"]) == [1.14, 1.0]


def test_trace_panel_traces_and_reports_bad_input(gemma_tiny):
    panel = TracePanel(*gemma_tiny, samples=2)
    panel.button.click()
    assert panel.level == "ok", panel.message.value
    assert panel.figure.data[0].z.shape == (len(panel.trace.tokens), gemma_tiny[0].config.num_hidden_layers)
    assert panel.table["p restored"].is_monotonic_decreasing and "strongest state" in panel.message.value
    panel.kind.value, panel.target.value = "attn", "Paris"
    panel.button.click()
    assert panel.level == "ok" and panel.trace.kind == "attn" and panel.trace.target == "Paris"
    panel.subject.value = "Colosseum"
    panel.button.click()
    assert panel.level == "error" and "does not occur in the prompt" in panel.message.value
    assert panel.trace.kind == "attn"  # the last good trace is kept
    panel.prompt.value = "Rome " * 100
    panel.button.click()
    assert panel.level == "error" and "prompt is" in panel.message.value


def test_collapse_lines_one_line_per_method_in_each_panel():
    curves = {"ROME": [{**p, "perplexity": 20.0 * p["n_edits"], "perplexity_unedited": 20.0} for p in CURVE],
              "MEMIT": [{**p, "perplexity": 20.0, "perplexity_unedited": 20.0} for p in CURVE[:2]]}
    fig = viz.collapse_lines(curves, protocol="generation")
    assert len(fig.data) == 2 * 4 and sum(t.showlegend for t in fig.data) == 2
    (ppl,) = [t for t in fig.data if t.meta == {"method": "ROME", "panel": "perplexity"}]
    assert list(ppl.x) == [1, 5, 10] and list(ppl.y) == [1.0, 5.0, 10.0]
    (gen,) = [t for t in fig.data if t.meta == {"method": "MEMIT", "panel": "generality"}]
    assert list(gen.y) == [0.5, 0.3] and "generation" in fig.layout.title.text.lower()


def test_norm_lines_one_line_per_method_and_the_unedited_norm():
    fig = viz.norm_lines({"ROME": [10.0, 10.5, 12.0], "MEMIT": [10.0, 10.1]}, original=9.9)
    assert [t.meta["method"] for t in fig.data] == ["ROME", "MEMIT"] and list(fig.data[0].x) == [1, 2, 3]
    assert fig.layout.shapes[0].y0 == 9.9 and fig.layout.annotations[0].text == "unedited"


# ----------------------------------------------------------------------------- the benchmark grid and the arena

def grid_row(method: str, mode: str, n: int, value: float, status: str = "done") -> dict:
    row = {"data": "teach", "method": method, "mode": mode, "n": n, "status": status, "reason": "",
           "questions": 0.9 if mode == "sequential" else None}
    return {**row, **{f"{p}_{k}": value for p in ("tf", "gen") for k in ("rel", "gen", "loc", "port")}}


GRID_ROWS = [grid_row("ice", "single", 1, 1.0), grid_row("ice", "sequential", 10, 0.8), grid_row("ice", "sequential", 100, 0.5),
             grid_row("rome", "single", 1, 0.9), grid_row("rome", "sequential", 10, 0.4), grid_row("rome", "batch", 10, 0.1),
             {**grid_row("rome", "sequential", 100, 0.0), "status": "skipped"}]


def test_grid_lines_draw_single_and_sequential_cells_done_on_a_log_axis():
    fig = viz.grid_lines(GRID_ROWS, "teach", protocol="gen")
    (rel,) = [t for t in fig.data if t.meta == {"method": "rome", "panel": "rel"}]
    assert list(rel.x) == [1, 10] and list(rel.y) == [0.9, 0.4]  # no batch cell, no skipped cell
    (q,) = [t for t in fig.data if t.meta == {"method": "ice", "panel": "questions"}]
    assert list(q.x) == [10, 100] and fig.layout.xaxis.type == "log"
    # ticks at the data's N only: no "2 5" minor labels between the decades
    assert list(fig.layout.xaxis4.tickvals) == [1, 10, 100] and list(fig.layout.xaxis4.ticktext) == ["1", "10", "100"]


def test_grid_lines_in_fast_mode_have_whole_edit_counts_and_say_when_lines_are_single_points():
    fast = [grid_row(m, mode, n, 0.5) for m in ("ice", "grace") for mode, n in (("single", 1), ("sequential", 2))]
    assert list(viz.grid_lines(fast, "teach").layout.xaxis.tickvals) == [1, 2]  # not 1.2, 1.4, ...
    single = viz.grid_lines([r for r in fast if r["n"] == 1], "teach")
    assert list(single.layout.xaxis.tickvals) == [1] and "only N = 1 was measured" in single.layout.title.text
    assert all(t.mode == "lines+markers" for t in single.data)  # a one-point line is its marker
    curve = viz.collapse_lines({"ROME": [{**CURVE[0], "perplexity": 1.0, "perplexity_unedited": 1.0}]})
    assert list(curve.layout.xaxis.tickvals) == [1] and "only N = 1" in curve.layout.title.text
    many = [grid_row("ice", "sequential", n, 0.5) for n in (1, 2, 3, 5, 7, 10, 20, 30, 50, 70, 100, 200, 500, 1000)]
    assert list(viz.grid_lines(many, "teach").layout.xaxis.tickvals) == [1, 10, 100, 1000]  # too many: decades


def test_every_method_in_one_chart_has_a_legend_below_that_fits():
    from kedit_teach.editors import METHODS
    rows = [grid_row(m, mode, n, 0.5) for m in METHODS for mode, n in (("single", 1), ("sequential", 10))]
    for fig in (viz.grid_lines(rows, "teach"), viz.grid_bars(rows, "teach", 10)):
        legend = fig.layout.legend
        assert (legend.orientation, legend.yref, legend.y, legend.yanchor) == ("h", "container", 0, "bottom")
        assert fig.layout.margin.b >= 70 + 22 * 2  # the axis title, then two rows of eleven names
        assert sum(t.showlegend is not False for t in fig.data) == len(METHODS)
    assert viz.grid_lines(rows, "teach").layout.height > viz.grid_lines(rows[:2], "teach").layout.height


def test_grid_bars_show_every_method_at_one_n():
    fig = viz.grid_bars(GRID_ROWS, "teach", 10)
    assert {t.meta["method"] for t in fig.data} == {"ice", "rome"}
    (ice,) = bars(fig, method="ice", protocol="generation")
    assert list(ice.y) == [0.8, 0.8, 0.8]


def cielab(colour: str) -> np.ndarray:
    """sRGB hex -> CIELAB (D65), where a distance of ~2 is just noticeable."""
    rgb = np.array([int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ linear
    t = xyz / [0.95047, 1.0, 1.08883]
    f = np.where(t > 216 / 24389, np.cbrt(t), (24389 / 27 * t + 16) / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_every_method_has_its_own_clearly_distinct_colour():
    from kedit_teach.editors import METHODS
    assert set(METHODS) <= set(viz.METHOD_COLORS)
    closest = min((np.linalg.norm(cielab(a) - cielab(b)), m, n) for (m, a), (n, b) in
                  itertools.combinations(viz.METHOD_COLORS.items(), 2))
    # the former palette's pink MEND and purple LTE, navy AlphaEdit and blue ROME were 28-29 apart
    assert closest[0] > 35, closest


def test_a_method_keeps_its_colour_in_every_chart_whatever_the_order():
    lines = viz.grid_lines(GRID_ROWS[::-1], "teach")  # rome first here, ice first in grid_bars
    bars_ = viz.grid_bars(GRID_ROWS, "teach", 10)
    norms = viz.norm_lines({"ROME": [1.0], "serac-prompt": [1.0], "serac-lte": [1.0]})
    for fig in (lines, bars_):
        assert {t.meta["method"]: t.line.color if isinstance(t, go.Scatter) else t.marker.color
                for t in fig.data} == {"ice": viz.METHOD_COLORS["ice"], "rome": viz.METHOD_COLORS["rome"]}
    colours = [t.line.color for t in norms.data]
    assert colours[0] == viz.METHOD_COLORS["rome"] and len(set(colours)) == 3  # variants: colours no method uses
    assert not set(colours[1:]) & set(viz.METHOD_COLORS.values())


def test_conflict_bars_split_each_method_by_outcome_and_probe():
    shares = [{"method": m, "kind": k, "outcome": o, "value": v}
              for m, vals in (("grace", (1.0, 0.0, 0.0)), ("recipe", (0.25, 0.5, 0.25)))
              for k in ("edit prompt", "rephrasing") for o, v in zip(("latest", "first", "neither"), vals)]
    fig = viz.conflict_bars(shares)
    (first,) = bars(fig, outcome="first", kind="rephrasing")
    assert list(first.y) == [0.0, 0.5] and first.marker.color == viz.CONFLICT_COLORS["first"]


def test_distractor_lines_one_line_per_method_over_store_size():
    changed = [{"method": m, "stored": n, "value": v} for m, vals in (("lte", (0.8, 0.8, 0.8)), ("recipe", (0.0, 0.04, 0.12)))
               for n, v in zip((100, 1000, 10000), vals)]
    fig = viz.distractor_lines(changed)
    assert [t.meta["method"] for t in fig.data] == ["lte", "recipe"] and fig.layout.xaxis.type == "log"
    assert list(fig.data[1].x) == [100, 1000, 10000] and list(fig.data[1].y) == [0.0, 0.04, 0.12]


def test_paraphrase_lines_put_the_farthest_bin_first():
    rows = [{"method": m, "bin": b, "similarity": r, "value": v}
            for m, vals in (("ice", (1.0, 1.0)), ("recipe", (0.3, 0.9)))
            for b, r, v in sorted(zip((1, 0), ("0.70-0.95", "0.20-0.69"), vals[::-1]), reverse=True)]
    fig = viz.paraphrase_lines(rows)
    assert [t.meta["method"] for t in fig.data] == ["ice", "recipe"]
    assert list(fig.data[1].x) == ["0.20-0.69", "0.70-0.95"] and list(fig.data[1].y) == [0.3, 0.9]


def test_hop_bars_colour_each_outcome():
    shares = [{"method": m, "outcome": o, "value": v} for m, vals in (("lte", (0.5, 0.1, 0.2, 0.2)), ("recipe", (0.3, 0.3, 0.3, 0.1)))
              for o, v in zip(("new", "target", "old", "other"), vals)]
    fig = viz.hop_bars(shares)
    (target,) = bars(fig, outcome="target")
    assert list(target.y) == [0.1, 0.3] and target.marker.color == viz.HOP_COLORS["target"]


def test_long_form_bars_show_every_measure_per_method():
    rows = [{"method": m, "measure": x, "value": v} for m, vals in (("ice", (0.9, 0.8, 0.2)), ("recipe", (0.4, 0.3, 0.9)))
            for x, v in zip(("token accuracy", "sentence recall", "locality"), vals)]
    fig = viz.long_form_bars(rows)
    (recall,) = bars(fig, measure="sentence recall")
    assert list(recall.x) == ["ice", "recipe"] and list(recall.y) == [0.8, 0.3] and len(fig.data) == 3


@pytest.fixture
def arena(gemma_tiny):
    panel = ArenaPanel(*gemma_tiny, methods=("ice", "grace", "rome", "mend"), settings={"grace": {"n_iter": 2}})
    panel.subject.value = ""  # ROME needs one: its row must say so while the others go on (and MEND has
    # no trained network for the tiny model: its row says so too)
    return panel


def test_arena_shows_every_method_in_one_row_and_leaves_the_model_as_loaded(arena):
    from .test_turns import snapshot
    names, weights = snapshot(arena.model)
    arena.run.click()
    assert arena.level == "ok", arena.message.value
    assert list(arena.table.index) == ["ice", "grace", "rome", "mend"]
    assert list(arena.table.columns) == ["edit prompt", "rephrasing", "portability", "unrelated", "edit", "right"]
    assert arena.table.loc["rome", "edit"] == "refused" and arena.table.loc["rome", "right"] == "–"
    # each refusal in full under the table, not cut short in a column
    refusals = {r["method"]: r["refused"] for r in arena.rows if "refused" in r}
    assert set(refusals) == {"rome", "mend"} and "train mend" in refusals["mend"] and "subject" in refusals["rome"]
    assert all(html.escape(why) in arena.notes.value for why in refusals.values())
    assert arena.table.loc["ice", "edit prompt"][0] in "✓✗" and arena.table.loc["ice", "right"].endswith("/4")
    assert widgets.ARENA_RULE in arena.notes.value.replace("&#x27;", "'")  # the ✓ rule, said under the table
    assert arena.progress.value == arena.progress.max == 4 and "4 methods done" in arena.message.value
    after_names, after = snapshot(arena.model)
    assert after_names == names and all(torch.equal(after[k], weights[k]) for k in weights)


@pytest.mark.parametrize("box, value, expected", [("port_answer", "", "portability question and its answer together"),
                                                  ("target", " ", "type an edit prompt and a new target"),
                                                  ("prompt", "Rome " * 400, "edit prompt is")])
def test_arena_bad_input_gives_a_visible_message(arena, box, value, expected):
    getattr(arena, box).value = value
    arena.run.click()
    assert arena.level == "error" and expected in arena.message.value and arena.rows == []


def test_arena_without_methods_says_so(arena):
    arena.methods.value = ()
    arena.run.click()
    assert arena.level == "error" and "pick at least one method" in arena.message.value


def fake_turns(calls: list, panel: ArenaPanel):
    """tour.turns without a model: records what the panel showed when each method began, refuses ROME
    with a long reason, and has every other method answer the unrelated prompt with "Tokyo"."""
    def turns(model, tokenizer, case, methods, settings):
        calls.append({"started": list(methods)})  # one generator per click: the unedited answers once
        before = {k: "Tokyo, and the capital of" if k == "unrelated" else "Paris" for k, _, _ in arena_probes(case)}
        for name in methods:
            calls.append({"table": panel.table, "outputs": panel.out.outputs, "message": panel.message.value,
                          "done": panel.progress.value})
            if name == "rome":
                yield {"method": name, "summary": "", "refused": "ROME reads the subject's last token, " * 8}, model
                continue
            after = {"edit prompt": "Rome, Italy", "rephrasing": "Paris, France", "portability": "Italy",
                     "unrelated": "Tokyo. It is the largest"}
            answers = [{"kind": k, "prompt": p, "before": before[k], "after": after[k],
                        "right": same_answer(after[k], expected or before[k])} for k, p, expected in arena_probes(case)]
            yield {"method": name, "summary": "", "edit_s": 0.5, "answer_s": 0.1, "answers": answers}, model
    return turns


def test_arena_clears_the_last_edit_and_shows_each_method_as_it_finishes(arena, monkeypatch):
    calls = []
    monkeypatch.setattr(widgets, "turns", fake_turns(calls, arena))
    monkeypatch.setattr(widgets, "unedited_answer", lambda editor, prompt: "Tokyo")
    arena.run.click()
    assert arena.level == "ok", arena.message.value
    started, calls[:] = [c for c in calls if "started" in c], [c for c in calls if "started" not in c]
    assert len(started) == 1 and len(started[0]["started"]) == 4  # every method in one pass
    assert [c["done"] for c in calls] == [0, 1, 2, 3]
    assert "ice edits, answers and is undone (1 of 4" in calls[0]["message"] and "(3 of 4" in calls[2]["message"]
    assert calls[0]["table"] is None and list(calls[2]["table"].index) == ["ice", "grace"]
    # the unrelated answer says Tokyo as the unedited model did: the same answer, whatever follows it
    assert arena.table.loc["ice", "unrelated"] == "✓ Tokyo. It is the largest"
    assert arena.table.loc["ice", "rephrasing"] == "✗ Paris, France" and arena.table.loc["ice", "right"] == "3/4"
    assert html.escape("ROME reads the subject's last token, " * 8) in arena.notes.value
    press_enter(arena.target)  # a second edit, by Enter: the first one's table goes at once
    calls[:] = [c for c in calls if "started" not in c]
    assert len(calls) == 8 and calls[4]["table"] is None and calls[4]["outputs"] == () and calls[4]["done"] == 0


def press_enter(box) -> None:
    """The message a browser's Enter in a text box sends (the front ends of ipywidgets 7 and 8 alike)."""
    box._handle_msg({"content": {"data": {"method": "custom", "content": {"event": "submit"}}}, "buffers": []})


def test_enter_in_a_text_box_runs_the_panels_main_action(lte_panel, playground):
    press_enter(lte_panel.target)
    assert lte_panel.editor.memory.ids == ["lte-1"] and "; 1 edit stored)" in lte_panel.message.value
    lte_panel.query.value = "Where is the Eiffel Tower?"
    press_enter(lte_panel.query)
    assert lte_panel.level == "ok" and list(lte_panel.table["case_id"]) == ["lte-1"]
    lte_panel.remove_id.value = "lte-1"
    press_enter(lte_panel.remove_id)
    assert not lte_panel.editor.cases and "0 edits left" in lte_panel.message.value
    lte_panel.query._handle_msg({"content": {"data": {"method": "custom", "content": {"event": "blur"}}}, "buffers": []})
    assert "0 edits left" in lte_panel.message.value  # any other message from the box runs nothing
    press_enter(playground.locality_answer)
    assert [c.case_id for c, _ in playground.history] == ["playground-1"]


@pytest.mark.parametrize("name", ["grace_panel", "lte_panel", "recipe_panel", "serac_panel"])
def test_a_panel_lists_the_editors_edits_even_when_a_cell_changes_them(request, name):
    panel = request.getfixturevalue(name)
    prefix = panel.id_prefix
    panel.add.click()
    panel.prompt.value, panel.target.value = "Toyota was founded in", "Germany"
    panel.add.click()
    assert panel.level == "ok", panel.message.value
    assert f"2 edits stored:</b> {prefix}-1 (The Eiffel" in panel.stored.value and f"{prefix}-2 (Toyota" in panel.stored.value
    if name != "grace_panel":
        panel.ask.click()
        assert len(panel.table) and panel.seen.value
    panel.editor.reset()  # a later notebook cell, not the panel
    widgets.refresh_panels()  # what IPython runs after every cell
    assert "nothing stored" in panel.stored.value and panel.level == "info"
    assert "changed outside this panel: 0 edits stored now" in panel.message.value
    if name == "grace_panel":
        assert panel.table.empty and panel.figure is None  # the codebook as it is now
    else:
        assert panel.table is None and panel.out.outputs == () and not panel.seen.value  # scores among gone edits
    panel.add.click()  # the numbering follows the editor: recipe-3 would pretend two edits exist
    assert f"{prefix}-1" in panel.message.value and "1 edit stored:</b>" in panel.stored.value
    if name != "grace_panel":
        assert "; 1 edit stored)" in panel.message.value
    outside = EditCase(case_id=f"{prefix}-7", subject="", prompt="The capital of Japan is", target_new="Rome")
    panel.editor.edit(outside)
    panel._ipython_display_()  # displayed again in a later cell: the list is read again first
    assert f"2 edits stored:</b> {prefix}-1" in panel.stored.value and f"{prefix}-7 (The capital" in panel.stored.value
    panel.prompt.value = "The Louvre is located in the city of"
    panel.add.click()
    assert f"{prefix}-8" in panel.message.value and sorted(panel.editor.cases) == [f"{prefix}-{i}" for i in (1, 7, 8)]


def test_panels_refresh_after_every_notebook_cell(monkeypatch, lte_panel):
    from IPython.core.events import EventManager, available_events
    shell = SimpleNamespace(events=EventManager(None, available_events))
    monkeypatch.setattr("IPython.get_ipython", lambda: shell)
    widgets._refresh_after_each_cell()
    widgets._refresh_after_each_cell()  # every panel asks; the hook is registered once
    assert shell.events.callbacks["post_run_cell"] == [widgets.refresh_panels]
    lte_panel.add.click()
    lte_panel.editor.reset()
    shell.events.trigger("post_run_cell", None)
    assert "nothing stored" in lte_panel.stored.value and "changed outside" in lte_panel.message.value


def widgets_in(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from widgets_in(child)


@pytest.mark.parametrize("name", ["arena", "playground", "grace_panel", "lte_panel", "recipe_panel", "serac_panel"])
def test_buttons_show_their_whole_label_and_sliders_are_wide_enough_to_aim(request, name):
    import ipywidgets
    sliders = (ipywidgets.IntSlider, ipywidgets.FloatSlider, ipywidgets.FloatLogSlider)
    parts = list(widgets_in(request.getfixturevalue(name).widget))
    buttons = [p for p in parts if isinstance(p, ipywidgets.Button)]
    assert buttons
    for button in buttons:
        # ~7 px a character of the 13 px font, and the padding; the default 148 px cut "Edit with
        # every method" to "Edit with every m…"
        assert int(button.layout.width.removesuffix("px")) >= 7 * len(button.description) + 30, button.description
    # the default width left the threshold slider a 44 px track beside its 160 px description
    assert all(s.layout.width == "95%" for s in parts if isinstance(s, sliders))


def test_effect_correlation_says_when_there_are_too_few_pairs_instead_of_nan():
    from kedit_teach.tracing import effect_correlation
    two = [{"traced effect": 0.1, "reliability": 1.0, "generality": 0.5},
           {"traced effect": 0.3, "reliability": 1.0, "generality": 0.7}]
    assert "nan" not in effect_correlation(two) and "2 (fact, layer) pairs: too few" in effect_correlation(two)
    five = [{"traced effect": e, "reliability": r, "generality": 1.0} for e, r in
            ((0.1, 0.0), (0.2, 0.0), (0.3, 1.0), (0.4, 1.0), (0.5, 1.0))]
    said = effect_correlation(five)
    assert said.startswith("correlation of the traced effect with reliability 0.87,") and "5 (fact, layer) pairs" in said
    assert "generality undefined (it does not vary)" in said
