"""Evaluation benchmarks for the task-formulation issue.

    python -m benchmarks.bench_eval throughput [--n 24]
    python -m benchmarks.bench_eval baselines  [--n 100] [--out artifacts/baselines]

throughput: cases per second through `evaluate`, batched with sliced logits against one probe at a
time with full logits (what most reference code does). Both must give the same metrics.
baselines: NoEdit, ICE and FT-L on the bundled set, CounterFact and KnowEdit ZsRE (from ../shared),
under all three protocols, written as JSON per run plus one markdown table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from kedit_teach.data import SHARED_DIR as SHARED  # the local benchmark copy, ../shared/data
DATASETS = {
    "teach": "teach",
    "counterfact": f"counterfact:{SHARED / 'counterfact' / 'counterfact-edit.json'}",
    "zsre": "zsre-held-out",  # KnowEdit ZsRE's held-out part (data.ZSRE_SPLIT)
}


def throughput(args) -> None:
    from kedit_teach.data import load_teach
    from kedit_teach.editors import NoEdit
    from kedit_teach.evaluate import evaluate
    from kedit_teach.models import load_model

    editor = NoEdit(*load_model())
    cases = load_teach(args.n)
    runs = {}
    for label, kw in {"batched+sliced": dict(batch_size=16, sliced=True),
                      "one-at-a-time+full": dict(batch_size=1, sliced=False)}.items():
        t = time.perf_counter()
        result = evaluate(editor, cases, mode="sequential", fluency_n=0, **kw)
        seconds = time.perf_counter() - t
        runs[label] = {"cases_per_s": len(cases) / seconds, "metrics": result["metrics"]}
        print(f"{label:20s} {len(cases) / seconds:6.2f} cases/s ({seconds:.1f} s for {len(cases)} cases)")
    fast, slow = runs["batched+sliced"], runs["one-at-a-time+full"]
    print(f"speed-up: {fast['cases_per_s'] / slow['cases_per_s']:.1f}x; "
          f"identical metrics: {fast['metrics'] == slow['metrics']}")


def baselines(args) -> None:
    from kedit_teach.__main__ import summary_table
    from kedit_teach.data import load_cases
    from kedit_teach.editors import METHODS
    from kedit_teach.evaluate import evaluate
    from kedit_teach.models import load_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tok = load_model()
    rows = []
    for data_name, spec in DATASETS.items():
        cases = load_cases(spec, n=args.n, seed=0)
        for method in args.methods:
            editor = METHODS[method](model, tok)
            result = evaluate(editor, cases, mode="single", fluency_n=args.fluency_n)
            result.update(data=data_name)
            (out / f"{method}-{data_name}.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
            print(summary_table(result), flush=True)
            rows.append(result)
    table = ["| data | method | protocol | rel | gen | loc | loc (gt) | port | fluency | edit s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for r in rows:
        for proto, m in r["metrics"].items():
            table.append(f"| {r['data']} | {r['method']} | {proto} | {fmt(m['reliability'])} | "
                         f"{fmt(m['generality'])} | {fmt(m['locality'])} | {fmt(m['locality_gt'])} | "
                         f"{fmt(m['portability'])} | {fmt(r['fluency']['x100'])} | "
                         f"{r['timing']['edit_s_mean']:.3f} |")
    (out / "baselines.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--n", type=int, default=24)
    t.set_defaults(fn=throughput)
    b = sub.add_parser("baselines")
    b.add_argument("--n", type=int, default=100)
    b.add_argument("--methods", nargs="+", default=["noedit", "ice", "ft-l"])
    b.add_argument("--fluency-n", type=int, default=10)
    b.add_argument("--out", default="artifacts/baselines")
    b.set_defaults(fn=baselines)
    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
