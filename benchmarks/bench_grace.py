"""GRACE benchmarks, each measured in one run on this machine (compare ratios, not seconds).

    python -m benchmarks.bench_grace speed     [--n 6]     cached-prefix vs naive value training
    python -m benchmarks.bench_grace layers    [--n 24]    sequential locality at layer 12 vs 15
    python -m benchmarks.bench_grace lifelong  [--n 100] [--data ...] [--eps 1.0 ...]   sequential N
    python -m benchmarks.bench_grace overhead              inference with 1k / 10k codebook entries
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from kedit_teach.data import SHARED_DIR as SHARED  # the local benchmark copy, ../shared/data
COUNTERFACT = SHARED / "counterfact" / "counterfact-edit.json"


def _setup():
    from kedit_teach.models import load_model
    return load_model()


def speed(args) -> None:
    from kedit_teach.data import load_counterfact
    from kedit_teach.editors import GRACE
    model, tok = _setup()
    cases = load_counterfact(COUNTERFACT, n=args.n)
    paths = {"naive: full forward + full logits": (False, None),
             "cached tail + sliced logits": (True, None),
             "cached tail, early stop at 1e-3": (True, 1e-3),
             "cached tail, early stop at 5e-3 (default)": (True, 5e-3)}
    editor = GRACE(model, tok, n_iter=args.n_iter)
    times, steps, diffs = ({name: [] for name in paths} for _ in range(3))
    for case in cases:
        values = {}
        for name, (fast, stop) in paths.items():
            editor.stop_loss = stop
            t = time.perf_counter()
            values[name], losses = editor.train_value(case, fast=fast)
            times[name].append(time.perf_counter() - t)
            steps[name].append(len(losses))
        naive = values["naive: full forward + full logits"]
        for name in paths:
            diffs[name].append(float((values[name] - naive).norm() / naive.norm()))
    base = statistics.mean(times["naive: full forward + full logits"])
    print(f"value training, n_iter={args.n_iter}, {len(cases)} CounterFact edits on Gemma-3-270M "
          f"({torch.get_num_threads()} threads):")
    for name in paths:
        s = statistics.mean(times[name])
        print(f"  {name:36s} {s:6.2f} s/edit  {base / s:4.1f}x faster than naive  steps {statistics.mean(steps[name]):4.1f}"
              f"  max relative value difference vs naive {max(diffs[name]):.1e}")


def _sequential(model, tok, cases, **kw) -> dict:
    from kedit_teach.editors import GRACE
    from kedit_teach.evaluate import evaluate
    editor = GRACE(model, tok, **kw)
    try:
        result = evaluate(editor, cases, mode="sequential", fluency_n=10)
        result["ops"] = {op: sum(e["op"] == op for e in editor.log) for op in ("add", "expand", "split")}
        return result
    finally:  # unwrap so the next editor can wrap a layer of the same model
        editor.reset()
        parent = model.get_decoder().get_submodule(f"layers.{editor.layer}.mlp")
        parent.down_proj = editor.adapter.base


def layers(args) -> None:
    from kedit_teach.data import load_counterfact
    model, tok = _setup()
    cases = load_counterfact(COUNTERFACT, n=args.n)
    for layer in args.layers:
        r = _sequential(model, tok, cases, layer=layer)
        loc = r["metrics"]["teacher_forced"]["locality"]
        flipped = sum(p["teacher_forced_exact"] < 1 for c in r["per_case"] for p in c["probes"]
                      if p["kind"] == "locality")
        print(f"layer {layer}: teacher-forced locality {loc:.3f}, locality prompts changed {flipped}/"
              f"{len(cases)}, reliability {r['metrics']['teacher_forced']['reliability']:.3f}, ops {r['ops']}")


def lifelong(args) -> None:
    from kedit_teach.__main__ import summary_table
    from kedit_teach.data import load_cases
    model, tok = _setup()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    specs = {"teach": "teach", "counterfact": f"counterfact:{COUNTERFACT}"}
    for name in args.data:
        cases = load_cases(specs[name], n=args.n, seed=0)
        for eps in args.eps:
            r = _sequential(model, tok, cases, eps_init=eps)
            r["data"] = name
            (out / f"grace-{name}-eps{eps:g}.json").write_text(json.dumps(r, indent=1, ensure_ascii=False))
            print(summary_table(r), f"\nops: {r['ops']}", flush=True)


def overhead(args) -> None:
    from kedit_teach.data import load_counterfact, load_teach
    from kedit_teach.editors import GRACE, NoEdit
    model, tok = _setup()
    cases = load_teach(32)
    prompts, targets = [c.prompt for c in cases], [c.ground_truth for c in cases]
    base = NoEdit(model, tok)

    def timed(editor) -> float:
        editor.score(prompts, targets)
        return statistics.median(_time(lambda: editor.score(prompts, targets)) for _ in range(5))

    t0 = timed(base)
    editor = GRACE(model, tok)
    background = load_counterfact(COUNTERFACT.with_name("counterfact-train.json"), n=max(args.sizes))
    for size in args.sizes:
        editor.reset()
        editor.fill(background[:size])  # synthetic entries: every lookup runs, none fires
        t = timed(editor)
        print(f"{size:>6} entries: {t / t0:.3f}x the unedited model's scoring time (32 prompts)")


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--n", type=int, default=6)
    s.add_argument("--n-iter", type=int, default=50)
    s.set_defaults(fn=speed)
    la = sub.add_parser("layers")
    la.add_argument("--n", type=int, default=24)
    la.add_argument("--layers", type=int, nargs="+", default=[12, 15])
    la.set_defaults(fn=layers)
    li = sub.add_parser("lifelong")
    li.add_argument("--n", type=int, default=100)
    li.add_argument("--out", default="artifacts/grace")
    li.add_argument("--data", nargs="+", default=["teach", "counterfact"], choices=["teach", "counterfact"])
    li.add_argument("--eps", type=float, nargs="+", default=[0.8], help="eps_init values to compare")
    li.set_defaults(fn=lifelong)
    o = sub.add_parser("overhead")
    o.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    o.set_defaults(fn=overhead)
    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
