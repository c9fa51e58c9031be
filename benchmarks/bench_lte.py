"""LTE benchmarks, each measured in one run on this machine (compare ratios, not seconds).

    python -m benchmarks.bench_lte memory   [--sizes 1000 10000 100000]  insert / query time vs memory size
    python -m benchmarks.bench_lte hits     [--n 100]   retrieval hit rate@k for edit prompts and rephrasings
    python -m benchmarks.bench_lte compare  [--n 100]   aligned vs unaligned LTE vs ICE (gold), sequential
    python -m benchmarks.bench_lte ablation [--n 50] [--steps 150]   the paper's ablation rows and k

`compare` and `ablation` write their JSON results under artifacts/lte/ and print one table each.
The CounterFact edits are from ../shared (their subjects never occur in the adapter's training data).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from kedit_teach.data import SHARED_DIR as SHARED  # the local benchmark copy, ../shared/data
COUNTERFACT = SHARED / "counterfact" / "counterfact-edit.json"
CF_TRAIN = SHARED / "counterfact" / "counterfact-train.json"
WIKIBIO = SHARED / "knowedit" / "wikibio-test-all.json"
OUT = Path("artifacts/lte")


def _ms(fn, repeat: int = 20) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def memory(args) -> None:
    """Background entries are random unit vectors: a flat index's cost depends only on their count.
    hnsw recall@1 is the share of queries whose top hit is the flat (exact) index's top hit."""
    from kedit_teach.data import load_counterfact
    from kedit_teach.memory import VectorMemory
    from kedit_teach.models import load_encoder
    encoder = load_encoder()
    cases = load_counterfact(COUNTERFACT, n=200)
    texts, queries = [c.descriptor for c in cases], [c.rephrase_prompts[0] for c in cases]
    rng = np.random.default_rng(0)
    dim = VectorMemory(encoder).dim
    print(f"memory timing, MiniLM ({dim}-d, cosine), median of 20 "
          f"({faiss_threads()} faiss threads):")
    for size in args.sizes:
        background = rng.standard_normal((size, dim))
        top1 = {}
        for kind in ("flat", "hnsw"):
            mem = VectorMemory(encoder, index=kind)
            t = time.perf_counter()
            mem.add_vectors(background, [""] * size)
            build = time.perf_counter() - t
            mem.add(texts, [f"e{i}" for i in range(len(texts))])
            i = iter(range(10 ** 9))
            insert = _ms(lambda: mem.add(texts[next(i) % len(texts)], ids=f"x{next(i)}"))
            vectors = mem.encode(queries)
            query = _ms(lambda: mem.search(queries[next(i) % len(queries)], k=3))
            search = _ms(lambda: mem.search_vectors(vectors[next(i) % len(queries)][None], k=3))
            top1[kind] = [hs[0].id for hs in mem.search_vectors(vectors, k=1)]
            recall = "" if kind == "flat" else \
                f", recall@1 vs flat {np.mean([a == b for a, b in zip(top1['flat'], top1['hnsw'])]):.3f}"
            print(f"  {size:>7} entries, {kind}: insert {insert:6.2f} ms/edit, query {query:6.2f} ms "
                  f"(encode + search; search alone {search:5.2f} ms), filling {build:5.1f} s{recall}", flush=True)


def faiss_threads() -> int:
    import faiss
    return faiss.omp_get_max_threads()


def hits(args) -> None:
    from kedit_teach.data import load_counterfact
    from kedit_teach.memory import build_memory
    from kedit_teach.models import load_encoder
    encoder = load_encoder()
    cases = load_counterfact(COUNTERFACT, n=args.n)
    extra = load_counterfact(CF_TRAIN, n=args.extra) if args.extra else []
    for label, pool in ((f"{len(cases)} edits", cases), (f"{len(cases)} edits + {len(extra)} other descriptors", cases + extra)):
        ids = [f"x{i}" if i >= len(cases) else c.case_id for i, c in enumerate(pool)]
        mem = build_memory([c.descriptor for c in pool], ids, encoder)
        for kind, prompts in (("edit prompt", lambda c: [c.prompt]), ("rephrasing", lambda c: c.rephrase_prompts)):
            rows = [(c.case_id, p) for c in cases for p in prompts(c)]
            found = mem.search([p for _, p in rows], k=3)
            rates = {k: sum(cid in [h.id for h in hs[:k]] for (cid, _), hs in zip(rows, found)) / len(rows)
                     for k in (1, 2, 3)}
            print(f"  {label:40s} {kind:12s} hit@1 {rates[1]:.3f}  hit@2 {rates[2]:.3f}  hit@3 {rates[3]:.3f}"
                  f"  ({len(rows)} queries)")


def _row(result: dict) -> str:
    m = result["metrics"]
    cells = []
    for proto in ("teacher_forced", "teacher_forced_exact", "generation"):
        cells.append("/".join("–" if m[proto][k] is None else f"{m[proto][k]:.2f}"
                              for k in ("reliability", "generality", "locality", "portability")))
    return " | ".join(cells) + f" | {1000 * result['timing']['edit_s_mean']:.1f} ms | {result['timing']['infer_s_mean']:.3f} s"


HEADER = ("| run | teacher-forced rel/gen/loc/port | exact | generation | edit | inference/probe |\n"
          "|---|---|---|---|---|---|")


def _evaluate(editor, cases, name: str, out: Path = OUT, mode: str = "sequential", spec: str = "") -> dict:
    """A run (sequential by default), saved as out/name.json with the data split it used, and the
    editor reset."""
    from kedit_teach.data import split_record
    from kedit_teach.evaluate import evaluate
    result = evaluate(editor, cases, mode=mode, fluency_n=10)
    result.update(data=spec, split=split_record(spec))
    editor.reset()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    return result


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-=" else "_" for ch in label)


def compare(args) -> None:
    from kedit_teach.data import load_cases
    from kedit_teach.editors import ICE, LTE
    from kedit_teach.memory import VectorMemory
    from kedit_teach.models import load_encoder, load_model
    model, tok = load_model()
    encoder = load_encoder()
    editors = {"LTE aligned (k=3)": LTE(model, tok, VectorMemory(encoder)),
               "LTE unaligned (k=3)": LTE(model, tok, VectorMemory(encoder), adapter=None),
               "ICE (gold fact)": ICE(model, tok)}
    for data, spec in (("counterfact", f"counterfact:{COUNTERFACT}"), ("zsre", "zsre-held-out")):
        cases = load_cases(spec, n=args.n, seed=0)
        print(f"\n{data}, {len(cases)} sequential edits\n{HEADER}", flush=True)
        for label, editor in editors.items():
            slug = label.split(" (")[0].lower().replace(" ", "-")
            r = _evaluate(editor, cases, f"{data}-{slug}", spec=spec)
            print(f"| {label} | {_row(r)} |", flush=True)


def ablation(args) -> None:
    from kedit_teach import alignment
    from kedit_teach.data import load_cases
    from kedit_teach.editors import LTE
    from kedit_teach.memory import VectorMemory
    from kedit_teach.models import load_encoder, load_model
    encoder = load_encoder()
    cases = load_cases(f"counterfact:{COUNTERFACT}", n=args.n, seed=0)
    train_cases = alignment.load_training_cases(alignment.default_sources(), n=1500, seed=0)
    held_out = alignment.default_held_out()
    rows = {"full recipe": {}, "w/o threefold": {"threefold": False}, "w/o in-scope": {"in_scope": False},
            "w/o out-of-scope": {"out_of_scope": False}, "w/o free text": {"free_text": False}}
    print(f"ablation: {args.steps} training steps each, {len(cases)} sequential CounterFact edits, k=3\n{HEADER}")
    for label, flags in rows.items():
        name = f"ablation-{_slug(label)}-n{args.n}-steps{args.steps}"
        if (OUT / f"{name}.json").exists():  # rows already measured with these settings
            print(f"| {label} (kept from an earlier run) | {_row(json.loads((OUT / f'{name}.json').read_text()))} |")
            continue
        model, tok = load_model()
        editor = LTE(model, tok, VectorMemory(encoder), adapter=None)
        start = time.perf_counter()
        editor.train_alignment(train_cases, held_out, alignment.AlignmentConfig(**flags),
                               alignment.TrainConfig(steps=args.steps), out=OUT / "adapters" / _slug(label))
        trained = time.perf_counter() - start
        r = _evaluate(editor, cases, name)
        print(f"| {label} ({trained / 60:.1f} min) | {_row(r)} |", flush=True)
    shipped = LTE(*load_model(), VectorMemory(encoder))
    for k in (1, 2, 3):
        shipped.k = k
        r = _evaluate(shipped, cases, f"ablation-shipped-k{k}-n{args.n}")
        print(f"| shipped adapter, k={k} | {_row(r)} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    m.set_defaults(fn=memory)
    h = sub.add_parser("hits")
    h.add_argument("--n", type=int, default=100)
    h.add_argument("--extra", type=int, default=10000, help="CounterFact-train descriptors added as distractors")
    h.set_defaults(fn=hits)
    c = sub.add_parser("compare")
    c.add_argument("--n", type=int, default=100)
    c.set_defaults(fn=compare)
    a = sub.add_parser("ablation")
    a.add_argument("--n", type=int, default=50)
    a.add_argument("--steps", type=int, default=150)
    a.set_defaults(fn=ablation)
    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
