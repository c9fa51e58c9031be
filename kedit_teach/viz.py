"""Figures and tables from results: plain data in, `plotly.graph_objects.Figure` or DataFrame out.

What it does:
- `grouped_bars` is the one bar-chart builder: bars grouped by one column, faceted by up to two
  others, missing values (None/NaN) left as gaps. Every figure here (and the GRACE / LTE figures
  to come) is a thin call to it, so colours, labels and facets look the same across the course.
- `metrics_bar` / `scores_table` / `cost_table` / `probes_table` read `evaluate()` results.
- `before_after` / `before_after_table` read the per-probe rows of one edit (`widgets.edit_report`).
- `next_token_bars`: one prompt's most likely next tokens (`metrics.next_token_probs`).
- GRACE: `distances_vs_radii` (each query's distance to a codebook key against that entry's radius),
  `pca_2d` / `codebook_projection` (keys, radii and queries in a 2-D plane), `lifelong_lines`
  (scores vs number of sequential edits, from `evaluate.curve`).
- LTE: `retrieval_bars` (top-k scores for one query), `alignment_mix` (the data mix),
  `loss_curve` (alignment training).
- RECIPE and SERAC: `decision_bars` (one query's scores against stored edits, and the line to beat),
  drawn by `sentinel_bars` (RECIPE's similarity, the sentinel) and `scope_bars` (SERAC's scope
  probabilities, the threshold), and `routing_bars` (both deciding on the same queries); RECIPE:
  `gate_sweep_lines` (fixed thresholds against the sentinel), `loss_curves` (its five losses).
- Locate-then-edit: `trace_heatmap` (a causal trace, token x layer), `norm_lines` (the edited
  layer's weight norm over sequential edits), `collapse_lines` (sequential editing per method).
- `METHOD_COLORS` / `method_colors`: one colour per method in every chart of the course.
  Charts of methods put their legend under the plot, and a number-of-edits axis has ticks at
  the data's N only.
- The benchmark grid (`grid.run_grid` rows): `grid_lines` (each metric against N, one line per
  method), `grid_bars` (every method at one N).
Every figure and table names the protocol behind each number (teacher-forced or generation).

What it does not do: run models, hold widgets or display anything (see `widgets.py`).
"""
from __future__ import annotations

import math
from itertools import cycle
from typing import Callable

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .evaluate import KINDS as PROBE_KINDS
from .grid import KINDS as GRID_KINDS, PROTOCOLS as GRID_PROTOCOLS, REL_GEN_LOC, lifelong
from .metrics import PROTOCOLS, plural

KINDS = (*PROBE_KINDS, "locality_gt")  # locality_gt is a metric of the locality probes, not a probe kind
STAGES = ("before", "after")

LABELS = {
    "teacher_forced": "teacher-forced: token accuracy",
    "teacher_forced_exact": "teacher-forced: exact match",
    "generation": "generation: greedy generate()",
    "reliability": "reliability",
    "generality": "generality",
    "locality": "locality (unchanged)",
    "portability": "portability",
    "locality_gt": "locality (vs answer)",
    "before": "before edit",
    "after": "after edit",
}
STAGE_COLORS = {"before": "#b0b0b0", "after": "#1f77b4"}
# One colour per method across the course, so a student finds a method by its colour in every chart.
# Chosen to stay apart with all eleven in one chart: every pair is at least 38 apart in CIELAB (21 in
# CIEDE2000); the earlier pink MEND, navy AlphaEdit and brown FT-L sat 28 from purple LTE, blue ROME
# and grey NoEdit.
METHOD_COLORS = {"noedit": "#7f7f7f", "ice": "#17becf", "ft-l": "#6c4516", "grace": "#2ca02c", "lte": "#9467bd",
                 "recipe": "#d62728", "serac": "#ff7f0e", "mend": "#882255", "rome": "#1f77b4", "memit": "#bcbd22",
                 "alphaedit": "#000000"}


def method_colors(names) -> dict:
    """The course colour of each method name (any case); other names (a variant such as
    "serac-prompt") take the colours no method uses, in order."""
    spare = cycle([c for c in qualitative.Dark24 if c.lower() not in METHOD_COLORS.values()])
    return {n: METHOD_COLORS.get(str(n).lower()) or next(spare) for n in dict.fromkeys(names)}


def label(value) -> str:
    return LABELS.get(value, str(value))


def _legend_below(fig: go.Figure, names) -> None:
    """A horizontal legend under the plot, the figure made taller by the rows it needs: a legend
    beside the plot scrolled with nine or more methods and hid the last ones."""
    names = list(dict.fromkeys(str(n) for n in names))
    # ~7 px a character plus the line sample, in rows of ~700 px (a notebook's narrowest output)
    rows = max(1, -(-sum(7 * len(n) + 45 for n in names) // 700))
    below = 70 + 22 * rows  # the x axis title, then the legend's rows
    fig.update_layout(legend=dict(orientation="h", yref="container", y=0, yanchor="bottom", x=0, xanchor="left"),
                      height=fig.layout.height + below - (fig.layout.margin.b or 0),
                      margin=dict(b=below))


def _edit_counts(fig: go.Figure, counts, log: bool = False) -> None:
    """Ticks at the numbers of edits the data holds, so an axis never shows 1.5 edits or a log axis
    its "2 5" minor labels (decades instead, when there are too many to label); with a single
    number of edits every line is one point, and the title says so."""
    counts = sorted({int(c) for c in counts})
    if not counts:
        return
    if len(counts) <= 12:
        ticks = counts
    elif log:
        ticks = [10 ** k for k in range(int(math.log10(max(counts[0], 1))), int(math.log10(counts[-1])) + 1)]
    else:
        ticks = None  # a long linear axis gets integer steps from plotly anyway
    if ticks is not None:
        fig.update_xaxes(tickmode="array", tickvals=ticks, ticktext=[f"{t:,}" for t in ticks])
    if len(counts) == 1:
        fig.update_layout(title_text=f"{fig.layout.title.text or ''}<br><sup>one point per line: only N = {counts[0]:,} "
                                     "was measured (fast mode runs one N)</sup>")


def _short(text: str, n: int = 32) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def _levels(frame: pd.DataFrame, column: str | None) -> list:
    """Distinct values in order of first appearance; [None] for "no facet"."""
    return [None] if column is None else list(pd.unique(frame[column]))


def _number(value) -> float | None:
    # plotly draws None as a gap; NaN would also be a gap but reads as a bug in tests and hovers
    return None if value is None or pd.isna(value) else float(value)


def grouped_bars(frame: pd.DataFrame, x: str, group: str, col: str | None = None,
                 row: str | None = None, value: str = "value", colors: dict | None = None,
                 title: str = "", y_title: str = "score",
                 y_range: tuple[float, float] | None = (0, 1.05)) -> go.Figure:
    """Bars of `value` per `x`, one colour per `group`, one subplot per (`row`, `col`) value.

    Each trace carries `meta = {group: ..., row: ..., col: ...}` (by column name), so code and
    tests can find a bar without relying on subplot order.
    """
    rows, cols, groups, xs = (_levels(frame, c) for c in (row, col, group, x))
    colors = colors or (method_colors(groups) if group == "method" else dict(zip(groups, cycle(qualitative.Plotly))))
    # Column names once, over the top row, and row names as the y titles of the first column:
    # "row · column" over every subplot ran into its neighbours.
    titles = [label(c) if c is not None else "" for c in cols] if col is not None else None
    fig = make_subplots(rows=len(rows), cols=len(cols), subplot_titles=titles, shared_yaxes=True,
                        vertical_spacing=0.3 / len(rows), horizontal_spacing=0.04)
    for i, r in enumerate(rows, 1):
        for j, c in enumerate(cols, 1):
            where = pd.Series(True, index=frame.index)
            for column, level in ((row, r), (col, c)):
                if column is not None:
                    where &= frame[column] == level
            for g in groups:
                cell = frame[where & (frame[group] == g)].set_index(x)[value]
                meta = {k: v for k, v in ((group, g), (row, r), (col, c)) if k is not None}
                fig.add_trace(go.Bar(
                    x=[label(v) for v in xs], y=[_number(cell.get(v)) for v in xs],
                    name=label(g), legendgroup=str(g), showlegend=(i, j) == (1, 1),
                    marker_color=colors[g], meta=meta,
                    hovertemplate=f"{label(g)}<br>%{{x}}: %{{y:.3f}}<extra></extra>"), row=i, col=j)
    fig.update_layout(title=title, barmode="group", height=140 + 260 * len(rows),
                      legend_title_text=label(group), margin=dict(t=90, b=40))
    if group == "method":
        _legend_below(fig, [label(g) for g in groups])
    if y_range is not None:
        fig.update_yaxes(range=list(y_range))
    for i, r in enumerate(rows, 1):
        fig.update_yaxes(title_text=y_title if r is None else label(r).replace(": ", "<br>"),
                         row=i, col=1)
    # "locality (unchanged)" on two lines, so long kind names don't run into their neighbours
    fig.update_xaxes(tickvals=[label(v) for v in xs], ticktext=[_tick(label(v)) for v in xs],
                     tickangle=-30, tickfont_size=11)
    return fig


def _tick(text: str) -> str:
    return text.replace(" (", "<br>(") if len(text) > 12 else text


# ----------------------------------------------------------------------------- evaluate() results

def metrics_frame(results: dict[str, dict], protocols=PROTOCOLS) -> pd.DataFrame:
    """Long table (method, protocol, kind, value) from {method: evaluate() result}."""
    return pd.DataFrame([{"method": method, "protocol": p, "kind": k, "value": r["metrics"][p].get(k)}
                         for method, r in results.items() for p in protocols for k in KINDS])


def scores_table(results: dict[str, dict], protocols=PROTOCOLS) -> pd.DataFrame:
    """One row per (protocol, method), one column per metric kind; missing kinds are NaN."""
    frame = metrics_frame(results, protocols)
    order = pd.MultiIndex.from_product([list(protocols), list(results)], names=["protocol", "method"])
    return frame.pivot(index=["protocol", "method"], columns="kind", values="value").reindex(
        index=order, columns=list(KINDS)).astype(float)


def cost_table(results: dict[str, dict]) -> pd.DataFrame:
    """What each method cost: fluency (n-gram entropy x100) and seconds per edit and probe."""
    costs = {method: {"n": r["n"], "mode": r["mode"], "fluency_x100": r["fluency"]["x100"],
                      "edit_s": r["timing"]["edit_s_mean"], "infer_s_per_probe": r["timing"]["infer_s_mean"],
                      "total_s": r["timing"]["total_s"]} for method, r in results.items()}
    return pd.DataFrame.from_dict(costs, orient="index")


def fluency_tables(reports: dict[str, dict], prompts: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For `evaluate.fluency_report` results per editor: (one row per editor: fluency, its ratio to
    the first editor's, repetition, the share that begins with the new answer, the share that names
    the old answer after the new; one row per prompt: what each editor wrote)."""
    first = next(iter(reports.values()))["fluency_x100"]
    summary = pd.DataFrame({name: {"fluency_x100": r["fluency_x100"], "vs_" + next(iter(reports)): r["fluency_x100"] / first,
                                   "repetition": r["repetition"], "says_new_answer": r["answer"],
                                   "old_after_new": r.get("old_after_new")}
                            for name, r in reports.items()}).T
    texts = pd.DataFrame({name: r["texts"] for name, r in reports.items()}, index=prompts)
    return summary, texts


def probes_table(result: dict) -> pd.DataFrame:
    """Every scored probe of one evaluate() result, with what the model generated."""
    columns = ["case_id", "kind", "prompt", "target", "generated", *PROTOCOLS]
    return pd.DataFrame([p for case in result["per_case"] for p in case["probes"]], columns=columns)


def metrics_bar(results: dict[str, dict], protocols=PROTOCOLS, title: str = "") -> go.Figure:
    """Grouped bars per metric kind, one colour per method, one subplot per protocol."""
    frame = metrics_frame(results, protocols)
    return grouped_bars(frame, x="kind", group="method", col="protocol", title=title or _about(results))


def _about(results: dict[str, dict]) -> str:
    """E.g. "ice vs ft-l (n=10, single edits)": what was compared, on how many cases, how."""
    ns = "/".join(sorted({str(r["n"]) for r in results.values()}))
    modes = "/".join(sorted({r["mode"] for r in results.values()}))
    return f"{' vs '.join(results)} (n={ns}, {modes} edits)"


# ----------------------------------------------------------------------------- one edit, before/after

def before_after_frame(rows: list[dict]) -> pd.DataFrame:
    """Long table (method, kind, protocol, stage, value) from per-probe before/after rows.

    A row is {"method", "kind", "prompt", "target", "before": {protocol: score},
    "after": {protocol: score}, ...}; several probes of one kind are averaged.
    """
    long = pd.DataFrame([{"method": r["method"], "kind": r["kind"], "protocol": p, "stage": s,
                          "value": r[s][p]} for r in rows for s in STAGES for p in r[s]])
    keys = ["method", "protocol", "kind", "stage"]
    return long.groupby(keys, sort=False, as_index=False)["value"].mean()


SCORE_NAMES = {"teacher_forced": "token accuracy", "teacher_forced_exact": "exact match", "generation": "generation"}


def before_after_table(rows: list[dict]) -> pd.DataFrame:
    """One line per (method, probe kind): the target, what the model said before and after, each
    protocol's score before and after (two header rows, e.g. `table["generation", "after"]`), and
    the probe's prompt last. Answers first and short headers: with the prompt in front and a column
    per protocol and stage the answers sat beyond the screen's right edge."""
    protocols = list(rows[0]["after"]) if rows else []
    return pd.DataFrame([[r["target"], r.get("generated_before"), r.get("generated_after"),
                           *(round(r[s][p], 2) for p in protocols for s in STAGES), r["prompt"]] for r in rows],
                         index=pd.MultiIndex.from_tuples([(r["method"], r["kind"]) for r in rows], names=["method", "kind"]),
                         columns=pd.MultiIndex.from_tuples([("target", ""), ("answer", "before"), ("answer", "after"),
                                                            *((SCORE_NAMES.get(p, p), s) for p in protocols for s in STAGES),
                                                            ("prompt", "")]))


def before_after(rows: list[dict], protocols=("teacher_forced", "generation"),
                 title: str = "One edit: scores before and after") -> go.Figure:
    """Before/after bars per probe kind: one row of subplots per protocol, one column per method."""
    frame = before_after_frame(rows)
    frame = frame[frame["protocol"].isin(protocols)]
    return grouped_bars(frame, x="kind", group="stage", col="method", row="protocol",
                        colors=STAGE_COLORS, title=title)


# ----------------------------------------------------------------------------- one prompt

def next_token_bars(top: list[tuple[str, float]], prompt: str = "") -> go.Figure:
    """The model's most likely next tokens and their probabilities (`metrics.next_token_probs`).

    Tokens are shown with their leading space made visible (␣), since " Paris" and "Paris" are
    different tokens.
    """
    frame = pd.DataFrame({"token": [f"{i}. {t.replace(' ', '␣')}" for i, (t, _) in enumerate(top, 1)],
                          "probability": [p for _, p in top], "kind": "next token"})
    fig = grouped_bars(frame, x="token", group="kind", value="probability", y_title="probability",
                       title=f"Next token after “{_short(prompt, 60)}”" if prompt else "Next-token probabilities")
    fig.update_layout(showlegend=False, height=360)
    return fig


# ----------------------------------------------------------------------------- GRACE

RADIUS_COLOR = "#222"


def distances_vs_radii(rows: list[dict], title: str = "") -> go.Figure:
    """One bar per query: its key's distance to a codebook entry, with that entry's radius ε marked.

    A row is {"group", "prompt", "distance", "eps", "entry", "fired"} (`widgets.key_distances`):
    `fired` is the entry the lookup actually used, or None. A bar that ends below its ε mark is a
    query the codebook answers. Bars are coloured by group ("edit prompt", "rephrasings", ...).
    """
    frame = pd.DataFrame(rows)
    # numbered, so two identical prompts in different groups stay two bars
    frame["query"] = [f"{i}. {_short(r['prompt'])} ({'miss' if r['fired'] is None else 'hit'})"
                      for i, r in enumerate(rows, 1)]  # rows, not frame: pandas turns None into NaN
    fig = grouped_bars(frame, x="query", group="group", value="distance", y_range=None,
                       y_title="distance to the entry's key",
                       title=title or "Key distances vs radii: a bar below its ε mark is a hit")
    fig.update_layout(barmode="overlay")  # one bar per query: full width, no empty group slots
    fig.add_trace(go.Scatter(
        x=frame["query"], y=frame["eps"], mode="markers", name="radius ε of the entry",
        marker=dict(symbol="line-ew", size=36, line=dict(width=3, color=RADIUS_COLOR)),
        meta={"radius": True}, customdata=frame[["entry", "prompt"]].values,
        hovertemplate="entry %{customdata[0]}: ε = %{y:.3f}<br>%{customdata[1]}<extra></extra>"))
    fig.update_xaxes(title_text="query (prompt; hit = the codebook replaces the layer's output)",
                     automargin=True)
    fig.update_layout(height=480)
    return fig


def pca_2d(points) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """(coordinates [n, 2], project): the points on their top two principal directions.

    `project(other_points)` applies the same centring and directions, so anything drawn with these
    points lands in the same plane. The projection is orthogonal: projected distances are never
    longer than the true ones. An axis along which the points do not spread is all zeros.
    """
    points = np.atleast_2d(np.asarray(points, dtype=float))
    mean = points.mean(0)
    _, s, vt = np.linalg.svd(points - mean, full_matrices=False)
    basis = np.zeros((2, points.shape[1]))
    spread = s[:2] > 1e-9 * s[:1].max(initial=0.0)  # else SVD returns an arbitrary direction
    basis[:spread.sum()] = vt[:2][spread]

    def project(other) -> np.ndarray:
        return (np.atleast_2d(np.asarray(other, dtype=float)) - mean) @ basis.T
    return project(points), project


def codebook_projection(keys, eps, labels: list[str], queries: list[dict], title: str = "") -> go.Figure:
    """The codebook keys in a 2-D PCA plane, each with a circle of its radius ε, and query points.

    A query is {"prompt", "key", "group"}; it is a hit if its nearest key (in the full space, as the
    lookup decides) is within that entry's ε. The plane is fitted on the keys; a codebook of fewer
    than three keys spans no plane, so then the queries join the fit.
    """
    keys, eps = np.atleast_2d(np.asarray(keys, dtype=float)), np.asarray(eps, dtype=float).reshape(-1)
    if not len(eps):
        raise ValueError("the codebook is empty: make an edit first")
    q_keys = np.array([np.asarray(q["key"], dtype=float) for q in queries]).reshape(len(queries), -1)
    _, project = pca_2d(keys if len(keys) >= 3 else np.vstack([keys, q_keys]))
    xy = project(keys)
    fig = go.Figure()
    for (x, y), r in zip(xy, eps):
        fig.add_shape(type="circle", x0=x - r, y0=y - r, x1=x + r, y1=y + r,
                      line=dict(color=RADIUS_COLOR, width=1), fillcolor="rgba(31,119,180,0.08)")
    fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", name="codebook keys",
                             marker=dict(color=RADIUS_COLOR, size=7), meta={"keys": True},
                             customdata=np.stack([np.arange(len(eps)), eps], 1), text=labels,
                             hovertemplate="entry %{customdata[0]}: %{text}, ε = %{customdata[1]:.3f}"
                                           "<extra></extra>"))
    dist = np.linalg.norm(q_keys[:, None] - keys[None], axis=-1)     # [queries, entries]
    nearest = dist.argmin(1)
    hit = dist[np.arange(len(queries)), nearest] <= eps[nearest]
    q_xy = project(q_keys)
    groups = list(dict.fromkeys(q.get("group", "query") for q in queries))
    colors = dict(zip(groups, cycle(qualitative.Plotly)))
    for g in groups:
        for outcome, symbol in ((True, "circle"), (False, "x")):
            idx = [i for i, q in enumerate(queries) if q.get("group", "query") == g and hit[i] == outcome]
            if not idx:
                continue
            fig.add_trace(go.Scatter(
                x=q_xy[idx, 0], y=q_xy[idx, 1], mode="markers", name=f"{g}: {'hit' if outcome else 'miss'}",
                marker=dict(symbol=symbol, size=11, color=colors[g], line=dict(width=1, color="white")),
                meta={"group": g, "hit": outcome}, text=[queries[i]["prompt"] for i in idx],
                customdata=np.stack([dist[idx, nearest[idx]], nearest[idx]], 1),
                hovertemplate="%{text}<br>true distance %{customdata[0]:.3f} to entry %{customdata[1]}"
                              "<extra></extra>"))
    subtitle = ("PCA plane of the keys; circles have each entry's true radius ε, drawn in this plane. "
                "Projection only shortens distances, so a hit is always inside its circle, but a point<br>"
                f"inside a circle can still be a miss: its distance along the other {keys.shape[1] - 2} "
                "directions is not drawn. Hit or miss is decided in the full space.")
    fig.update_layout(title=dict(text=f"{title or 'The codebook in two dimensions'}<br>"
                                      f"<sup>{subtitle}</sup>"),
                      height=560, margin=dict(t=110), legend_title_text="query")
    fig.update_xaxes(title_text="principal direction 1")
    fig.update_yaxes(title_text="principal direction 2", scaleanchor="x", scaleratio=1)  # round circles
    return fig


def lifelong_lines(points: list[dict], protocols=("teacher_forced", "generation"),
                   kinds=("reliability", "generality", "locality"), title: str = "") -> go.Figure:
    """Scores of every edit made so far vs the number of sequential edits (`evaluate.curve` output).

    One subplot per protocol, one line per metric kind; traces carry meta {kind, protocol}.
    """
    xs = [p["n_edits"] for p in points]
    colors = dict(zip(kinds, cycle(qualitative.Plotly)))
    fig = make_subplots(rows=1, cols=len(protocols), subplot_titles=[label(p) for p in protocols],
                        shared_yaxes=True, horizontal_spacing=0.04)
    for j, protocol in enumerate(protocols, 1):
        for kind in kinds:
            fig.add_trace(go.Scatter(
                x=xs, y=[_number(p["metrics"][protocol].get(kind)) for p in points], mode="lines+markers",
                name=label(kind), legendgroup=kind, showlegend=j == 1, line=dict(color=colors[kind]),
                meta={"kind": kind, "protocol": protocol},
                hovertemplate=f"{label(kind)}<br>N = %{{x}}: %{{y:.3f}}<extra></extra>"), row=1, col=j)
    fig.update_layout(title=title or f"Lifelong editing: scores of all edits so far (up to {plural(max(xs), 'edit')})",
                      height=420, margin=dict(t=90, b=40), legend_title_text="metric")
    fig.update_yaxes(range=[0, 1.05])
    fig.update_yaxes(title_text="score", col=1)
    fig.update_xaxes(title_text="number of sequential edits")
    _edit_counts(fig, xs)
    return fig


# ----------------------------------------------------------------------------- LTE

def retrieval_bars(retrieved: list[dict], metric: str = "cosine", title: str = "") -> go.Figure:
    """The top-k descriptors retrieved for one query, by score (`LTE.inspect(prompt)["retrieved"]`).

    A row is {"case_id", "descriptor", "score"}; bars are in rank order. Cosine scores are drawn
    on [0, 1], dot-product scores on their own scale.
    """
    frame = pd.DataFrame({"descriptor": [f"{i}. {_short(r['descriptor'], 48)}" for i, r in enumerate(retrieved, 1)],
                          "score": [r["score"] for r in retrieved], "kind": "retrieved"})
    fig = grouped_bars(frame, x="descriptor", group="kind", value="score",
                       y_range=(0, 1.05) if metric == "cosine" else None,
                       y_title=f"{metric} similarity to the query",
                       title=title or f"Top-{len(retrieved)} retrieved edit descriptors")
    fig.update_layout(showlegend=False, height=380)
    fig.update_xaxes(tickangle=-20, automargin=True)
    return fig


def alignment_mix(mix: dict, title: str = "") -> go.Figure:
    """The alignment data mix (`alignment.mix`): shares per kind and per number of distractors."""
    rows = [{"part": "kind of example", "bucket": k.replace("_", "-"), "share": v}
            for k, v in mix["kind_share"].items()]
    rows += [{"part": "facts in context (threefold)", "bucket": f"exact + {k}", "share": v}
             for k, v in mix["distractor_share"].items()]
    frame = pd.DataFrame(rows)
    frame["series"] = "share"
    fig = grouped_bars(frame, x="bucket", group="series", col="part", value="share",
                       y_title="share of examples",
                       title=title or f"Alignment data: {mix['examples']} examples from {mix['cases']} cases")
    fig.update_layout(showlegend=False)
    return fig


def _smooth(values: list[float], window: int) -> list[float]:
    return [float(np.mean(values[max(0, i - window + 1):i + 1])) for i in range(len(values))]


def loss_curve(losses: list[float], window: int = 20, title: str = "") -> go.Figure:
    """Training loss per step, with a moving average over `window` steps."""
    steps = list(range(1, len(losses) + 1))
    fig = go.Figure([
        go.Scatter(x=steps, y=losses, mode="lines", name="loss per step", line=dict(color="#c0c0c0")),
        go.Scatter(x=steps, y=_smooth(losses, window), mode="lines", name=f"mean of last {window}",
                   line=dict(color="#1f77b4"))])
    fig.update_layout(title=title or "Alignment training loss (answer tokens only)", height=360,
                      xaxis_title="step", yaxis_title="cross-entropy", margin=dict(t=70, b=40))
    return fig


# ----------------------------------------------------------------------------- RECIPE

RECIPE_LOSSES = {"rel": "L_rel (Eq. 10)", "gen": "L_gen (Eq. 11)", "loc": "L_loc (Eq. 12)",
                 "no": "L_no (neighbour InfoNCE)", "so": "L_so (sentinel InfoNCE)"}


def loss_curves(curves: dict[str, list[float]], window: int = 20, title: str = "") -> go.Figure:
    """RECIPE's losses per step (`prompt_learning.train_modules`), each as a moving average. A loss
    computed on every k-th step only (`TrainConfig.edit_every`) is spread over the same steps."""
    steps = len(curves.get("total") or next(iter(curves.values())))
    fig = go.Figure([go.Scatter(x=[(i + 1) * steps / len(v) for i in range(len(v))], y=_smooth(v, window), mode="lines",
                                name=RECIPE_LOSSES.get(k, k), meta={"loss": k})
                     for k, v in curves.items() if k in RECIPE_LOSSES and v])
    fig.update_layout(title=title or f"RECIPE training losses (mean of the last {window} steps)", height=380,
                      xaxis_title="step", yaxis_title="loss", yaxis_type="log", margin=dict(t=70, b=40))
    return fig


def decision_bars(rows: list[tuple[str, str, float]], chosen: str | None, gate: float, gate_name: str,
                  x_title: str, decision: str, query: str, title: str,
                  x_range: tuple[float, float] | None = None) -> go.Figure:
    """One query against stored edits: a bar per (case_id, text, score), best on top, and the gate
    the best must beat as a vertical line; the chosen entry, if any, is green. The bars carry meta
    {case_id, attached}. RECIPE's sentinel and SERAC's scope classifier both draw with it."""
    fig = go.Figure()
    for case_id, text, score in rows[::-1]:  # best on top
        attached = case_id == chosen
        fig.add_trace(go.Bar(x=[score], y=[_short(f"{case_id}: {text}", 56)], orientation="h",
                             marker_color="#1a7f37" if attached else "#b0b0b0", showlegend=False,
                             meta={"case_id": case_id, "attached": attached},
                             hovertemplate=f"{text}<br>score %{{x:.3f}}<extra></extra>"))
    fig.add_vline(x=gate, line_dash="dash", line_color="#c62828",
                  annotation_text=f"{gate_name} = {gate:.2f}", annotation_position="top")
    fig.update_layout(title=dict(text=f"{title}<br><sup>{_short(query, 70)} → {decision}</sup>"),
                      height=120 + 40 * max(len(rows), 1), margin=dict(t=90, l=10, r=10, b=40),
                      xaxis_title=x_title, barmode="overlay")
    if x_range is not None:
        fig.update_xaxes(range=list(x_range))
    fig.update_yaxes(automargin=True)
    return fig


def sentinel_bars(info: dict, title: str = "") -> go.Figure:
    """One query against RECIPE's stored knowledge (`RECIPE.inspect(prompt)`): the gate is the
    sentinel's score r~_q . r_Theta, or a fixed threshold."""
    return decision_bars([(r["case_id"], r["knowledge"], r["score"]) for r in info["knowledge"]], info["retrieved"],
                         info["threshold"], "sentinel r~q·rΘ" if info["gate"] == "sentinel" else "fixed threshold",
                         "r~q · rk / √d",
                         f"attach the prompt of {info['retrieved']}" if info["retrieved"] else "attach nothing",
                         info["model_input"], title or "Query vs stored knowledge")


def scope_bars(info: dict, title: str = "") -> go.Figure:
    """One query against SERAC's stored edits (`SERAC.inspect(prompt)`): each edit's scope
    probability g(e, q), and the threshold the most likely edit must beat."""
    return decision_bars([(r["case_id"], r["edit"], r["probability"]) for r in info["scope"]], info["in_scope"],
                         info["threshold"], "threshold", "scope probability g(edit, query)",
                         f"in the scope of {info['in_scope']}: the counterfactual model answers" if info["in_scope"]
                         else "out of every edit's scope: the base model answers",
                         info["model_input"], title or "Query vs stored edits: the scope classifier", x_range=(0, 1.05))


def routing_bars(rates: dict[str, dict[str, float]], title: str = "") -> go.Figure:
    """Share of queries decided right per query kind, one bar per method ({method: {kind: share}},
    e.g. `gate_sweep(...)["sentinel"]` for RECIPE and for SERAC)."""
    frame = pd.DataFrame([{"method": m, "kind": k, "value": v} for m, kinds in rates.items() for k, v in kinds.items()])
    return grouped_bars(frame, x="kind", group="method", y_title="share decided right",
                        title=title or "Which stored edit applies? Decisions on the same queries")


def gate_sweep_lines(sweep: dict, title: str = "") -> go.Figure:
    """Decision accuracy of fixed thresholds (lines) against the sentinel (dashed), per query kind
    (`editors.recipe.gate_sweep`)."""
    colors = dict(zip(sweep["kinds"], cycle(qualitative.Plotly)))
    fig = go.Figure()
    for kind in sweep["kinds"]:
        fig.add_trace(go.Scatter(x=sweep["thresholds"], y=sweep["fixed"][kind], mode="lines", name=f"{kind}: fixed threshold",
                                 line=dict(color=colors[kind]), meta={"kind": kind, "gate": "fixed"}))
        fig.add_trace(go.Scatter(x=[sweep["thresholds"][0], sweep["thresholds"][-1]], y=[sweep["sentinel"][kind]] * 2,
                                 mode="lines", name=f"{kind}: sentinel", line=dict(color=colors[kind], dash="dash"),
                                 meta={"kind": kind, "gate": "sentinel"}))
    fig.update_layout(title=title or f"Right decisions: a fixed threshold vs the Knowledge Sentinel "
                                     f"({sweep['stored']} stored edits)",
                      height=420, xaxis_title="fixed threshold on r~q · rk / √d", yaxis_title="share of queries decided right",
                      yaxis_range=[0, 1.05], margin=dict(t=70, b=40))
    return fig


TRACE_TITLES = {"hidden": "the residual stream after each layer", "mlp": "MLP outputs",
                "attn": "attention outputs"}


def trace_heatmap(t, title: str = "") -> go.Figure:
    """A causal trace (`tracing.trace`): p(answer) with one (token, layer) state restored, tokens
    top to bottom, the subject's tokens starred; the colour scale runs from p_corrupt to p_clean."""
    start, end = t.subject_range
    tokens = [f"{tok!r}*" if start <= i < end else repr(tok) for i, tok in enumerate(t.tokens)]
    rows = [f"{i}: {tok}" for i, tok in enumerate(tokens)]  # the index keeps repeated tokens apart
    window = f", {t.window} layers restored together" if t.window > 1 else ""
    fig = go.Figure(go.Heatmap(z=t.scores, x=list(range(t.scores.shape[1])), y=rows, colorscale="Purples",
                               zmin=min(t.p_corrupt, float(t.scores.min())), zmax=max(t.p_clean, float(t.scores.max())),
                               colorbar=dict(title=f"p({t.target.strip()})"),
                               hovertemplate="layer %{x}<br>token %{y}<br>p = %{z:.3f}<extra></extra>"))
    fig.update_layout(
        title=dict(text=f"{title or 'Restoring ' + TRACE_TITLES[t.kind]}<br><sup>{_short(t.prompt, 60)} → "
                        f"{t.target.strip()!r}: clean p = {t.p_clean:.3f}, subject corrupted p = {t.p_corrupt:.3f}"
                        f"{window}</sup>"),
        height=140 + 28 * len(rows), margin=dict(t=90, l=10, r=10, b=40),
        xaxis_title="layer", yaxis=dict(autorange="reversed", automargin=True), meta={"kind": t.kind})
    return fig


def collapse_lines(curves: dict[str, list[dict]], protocol: str = "teacher_forced", title: str = "") -> go.Figure:
    """Sequential editing, one line per method (`evaluate.curve` output per method): reliability,
    generality and locality of all edits so far under `protocol`, and the general-ability check,
    the perplexity of a fixed passage relative to the unedited model's."""
    kinds = ("reliability", "generality", "locality")
    fig = make_subplots(rows=1, cols=4, subplot_titles=[label(k) for k in kinds] + ["perplexity / unedited"],
                        horizontal_spacing=0.06)
    colors = method_colors(curves)
    for name, points in curves.items():
        color = colors[name]
        xs = [p["n_edits"] for p in points]
        series = [[_number(p["metrics"][protocol].get(k)) for p in points] for k in kinds]
        series.append([p["perplexity"] / p["perplexity_unedited"] for p in points])
        for j, ys in enumerate(series, 1):
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=name, legendgroup=name,
                                     showlegend=j == 1, line=dict(color=color), marker_size=8,
                                     meta={"method": name, "panel": (list(kinds) + ["perplexity"])[j - 1]}), row=1, col=j)
    fig.update_layout(title=title or f"Sequential editing ({label(protocol)}): all edits so far",
                      height=380, margin=dict(t=90, b=40), legend_title_text="method")
    for j in (1, 2, 3):
        fig.update_yaxes(range=[0, 1.05], col=j)
    fig.update_xaxes(title_text="edits")
    _edit_counts(fig, [p["n_edits"] for points in curves.values() for p in points])
    _legend_below(fig, curves)
    return fig


def norm_lines(norms: dict[str, list[float]], original: float | None = None, title: str = "",
               yaxis_title: str = "|W|_F") -> go.Figure:
    """The edited layer's weight norm |W|_F after each sequential edit, one line per method (ROME's
    `norms`); a dotted line at the unedited norm. Its growth is the visible sign of collapse."""
    fig, colors = go.Figure(), method_colors(norms)
    for name, ys in norms.items():
        fig.add_trace(go.Scatter(x=list(range(1, len(ys) + 1)), y=ys, mode="lines+markers", name=name,
                                 line=dict(color=colors[name]), marker_size=8, meta={"method": name}))
    if original is not None:
        fig.add_hline(y=original, line_dash="dot", line_color="#888", annotation_text="unedited")
    fig.update_layout(title=title or "Weight norm of the edited layer after each edit", height=380,
                      xaxis_title="number of sequential edits", yaxis_title=yaxis_title, margin=dict(t=70, b=40))
    _edit_counts(fig, range(1, max(map(len, norms.values()), default=0) + 1))
    _legend_below(fig, norms)
    return fig


# ----------------------------------------------------------------------------- the benchmark grid

GRID_PANELS = {"rel": "reliability", "gen": "generality", "loc": "locality", "questions": "general questions"}


def _lifelong(rows: list[dict], data: str) -> list[dict]:
    return [r for r in lifelong(rows, data) if r["status"] == "done"]


def grid_lines(rows: list[dict], data: str, protocol: str = "gen", title: str = "") -> go.Figure:
    """`grid.run_grid` rows: reliability, generality, locality (under `protocol`, "tf" or "gen") and
    general-question accuracy against the number of edits, one line per method, log x axis."""
    fig = make_subplots(rows=1, cols=len(GRID_PANELS), subplot_titles=list(GRID_PANELS.values()),
                        horizontal_spacing=0.05)
    done = _lifelong(rows, data)
    for method, color in method_colors(r["method"] for r in done).items():
        mine = sorted((r for r in done if r["method"] == method), key=lambda r: r["n"])
        for j, key in enumerate(GRID_PANELS, 1):
            column = key if key == "questions" else f"{protocol}_{key}"
            points = [(r["n"], _number(r.get(column))) for r in mine if r.get(column) is not None]
            fig.add_trace(go.Scatter(x=[n for n, _ in points], y=[v for _, v in points], mode="lines+markers",
                                     name=method, legendgroup=method, showlegend=j == 1, line=dict(color=color),
                                     marker_size=8, meta={"method": method, "panel": key}), row=1, col=j)
    fig.update_layout(title=title or f"{data}: every method against the number of edits "
                                     f"({'generation' if protocol == 'gen' else 'teacher-forced'})",
                      height=380, margin=dict(t=90, b=40), legend_title_text="method")
    fig.update_yaxes(range=[0, 1.05])
    fig.update_xaxes(type="log", title_text="edits")
    _edit_counts(fig, [r["n"] for r in done], log=True)
    _legend_below(fig, dict.fromkeys(r["method"] for r in done))
    return fig


def grid_bars(rows: list[dict], data: str, n: int, title: str = "") -> go.Figure:
    """Every method's sequential cell at N edits: rel / gen / loc under both protocols, as bars."""
    done = [r for r in _lifelong(rows, data) if r["n"] == n]
    frame = pd.DataFrame([{"method": r["method"], "kind": GRID_KINDS[k], "protocol": proto, "value": r[f"{p}_{k}"]}
                          for r in done for p, proto in GRID_PROTOCOLS.items() for k in REL_GEN_LOC])
    return grouped_bars(frame, x="kind", group="method", col="protocol",
                        title=title or f"{data}, {plural(n, 'edit')} standing together")


CONFLICT_COLORS = {"latest": "#1a7f37", "first": "#d4a017", "neither": "#b0b0b0"}
HOP_COLORS = {"new": "#1a7f37", "target": "#d62728", "old": "#d4a017", "other": "#b0b0b0"}


def conflict_bars(shares: list[dict], title: str = "") -> go.Figure:
    """`stress.conflicts`: per method, the share of A -> B, A -> C pairs whose answer follows the
    latest edit, the first one, or neither; one panel per probe (edit prompt, rephrasing)."""
    return grouped_bars(pd.DataFrame(shares), x="method", group="outcome", col="kind", colors=CONFLICT_COLORS,
                        title=title or "A -> B, then A -> C: which edit does the answer follow?",
                        y_title="share of pairs")


def _method_lines(frame: pd.DataFrame, x: str, title: str, y_title: str, xaxis: dict) -> go.Figure:
    """One line per method of `frame` (columns method, x, value), in the frame's order."""
    fig, colors = go.Figure(), method_colors(frame["method"])
    for name, part in frame.groupby("method", sort=False):
        fig.add_trace(go.Scatter(x=part[x], y=part["value"], mode="lines+markers", name=name,
                                 line=dict(color=colors[name]), marker_size=8, meta={"method": name}))
    fig.update_layout(title=title, height=380, legend_title_text="method", xaxis=xaxis,
                      yaxis=dict(range=[0, 1.05], title=y_title))
    _legend_below(fig, colors)
    return fig


def distractor_lines(changed: list[dict], title: str = "") -> go.Figure:
    """`stress.distractors`: per method, the share of unrelated questions whose answer the store
    changed, against the number of stored edits (log axis)."""
    fig = _method_lines(pd.DataFrame(changed), "stored",
                        title or "Questions about unedited subjects: how many answers does the store change?",
                        "share of answers changed", dict(type="log", title="stored edits (other subjects)"))
    _edit_counts(fig, [r["stored"] for r in changed], log=True)
    return fig


def paraphrase_lines(rows: list[dict], title: str = "") -> go.Figure:
    """`stress.paraphrases`: per method, the share of rephrasings answered with the new target, in
    bins of MiniLM cosine to the edit's knowledge sentence, the farthest bin on the left."""
    return _method_lines(pd.DataFrame(rows).sort_values("bin", kind="stable"), "similarity",
                         title or "Generality by how far the rephrasing is from the knowledge sentence",
                         "rephrasings right (generation)",
                         dict(type="category", title="MiniLM cosine to prompt + target_new (equal-count bins)"))


def hop_bars(shares: list[dict], title: str = "") -> go.Figure:
    """`stress.multi_hop`: per method, the share of portability questions whose answer follows the
    new fact, repeats the edit's target, keeps the old fact, or none of these."""
    return grouped_bars(pd.DataFrame(shares), x="method", group="outcome", colors=HOP_COLORS,
                        title=title or "Portability: does the answer follow the new fact?", y_title="share of questions")


def long_form_bars(rows: list[dict], title: str = "") -> go.Figure:
    """`stress.long_form`: per method, how much of a new biography sentence it reproduces (teacher-
    forced tokens, words of its greedy continuation) and how many questions about the person keep
    their answers."""
    return grouped_bars(pd.DataFrame(rows), x="method", group="measure",
                        title=title or "Long-form edits: a passage continued by a new sentence", y_title="share")
