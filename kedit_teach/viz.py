"""Figures and tables from results: plain data in, `plotly.graph_objects.Figure` or DataFrame out.

What it does:
- `grouped_bars` is the one bar-chart builder: bars grouped by one column, faceted by up to two
  others, missing values (None/NaN) left as gaps. Every figure here (and the GRACE / LTE figures
  to come) is a thin call to it, so colours, labels and facets look the same across the course.
- `metrics_bar` / `scores_table` / `cost_table` / `probes_table` read `evaluate()` results.
- `before_after` / `before_after_table` read the per-probe rows of one edit (`widgets.edit_report`).
Every figure and table names the protocol behind each number (teacher-forced or generation).

What it does not do: run models, hold widgets or display anything (see `widgets.py`).
"""
from __future__ import annotations

from itertools import cycle

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .evaluate import KINDS as PROBE_KINDS
from .metrics import PROTOCOLS

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


def label(value) -> str:
    return LABELS.get(value, str(value))


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
    colors = colors or dict(zip(groups, cycle(qualitative.Plotly)))
    titles = [" · ".join(label(v) for v in (r, c) if v is not None) for r in rows for c in cols]
    fig = make_subplots(rows=len(rows), cols=len(cols), subplot_titles=titles, shared_yaxes=True,
                        vertical_spacing=0.25 / len(rows), horizontal_spacing=0.04)
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
    if y_range is not None:
        fig.update_yaxes(range=list(y_range))
    fig.update_yaxes(title_text=y_title, col=1)
    return fig


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


def before_after_table(rows: list[dict]) -> pd.DataFrame:
    """One line per (method, probe): every protocol's score before and after, and the generations."""
    return pd.DataFrame([{"method": r["method"], "kind": r["kind"], "prompt": r["prompt"],
                           "target": r["target"],
                           **{f"{p} {s}": r[s][p] for p in r["after"] for s in STAGES},
                           "generated before": r.get("generated_before"),
                           "generated after": r.get("generated_after")} for r in rows])


def before_after(rows: list[dict], protocols=("teacher_forced", "generation"),
                 title: str = "One edit: scores before and after") -> go.Figure:
    """Before/after bars per probe kind: one row of subplots per protocol, one column per method."""
    frame = before_after_frame(rows)
    frame = frame[frame["protocol"].isin(protocols)]
    return grouped_bars(frame, x="kind", group="stage", col="method", row="protocol",
                        colors=STAGE_COLORS, title=title)
