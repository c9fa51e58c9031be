"""The weakness experiments of notebook 06 (`kedit_teach/stress.py`), larger than the notebook runs them.

    python -m benchmarks.bench_stress conflicts [--pairs 40] [--data teach] [--methods ice ft-l grace lte recipe]
        A -> B, then A -> C for each pair, all of them standing together: the share of answers that
        follow the latest edit, the first one, or neither; edit prompts and rephrasings

    python -m benchmarks.bench_stress distractors [--probes 200] [--sizes 100 1000 10000] [--methods lte recipe]
        questions about CounterFact subjects never edited, against a growing store of CounterFact-train
        edits (other subjects, many of them look-alikes): the share of answers the store changes

    python -m benchmarks.bench_stress paraphrases [--cases 100] [--bins 4] [--methods ice grace lte recipe]
        CounterFact edits, all standing together; generality (generation) of their rephrasings in bins of
        MiniLM cosine to the knowledge sentence, the farthest first

    python -m benchmarks.bench_stress multi_hop [--data teach zsre] [--n 100] [--methods ice grace lte recipe]
        every edit standing together, then each portability question: does the answer follow the new
        fact, repeat the edit's target, keep the old fact, or neither?

    python -m benchmarks.bench_stress long_form [--n 50] [--methods noedit ice ft-l grace lte recipe rome]
        KnowEdit WikiBio: a biography passage continued by a new sentence, every edit standing together;
        teacher-forced token accuracy, word recall of the greedy continuation, locality; the cases are
        those RECIPE's encoder accepts (how many it refuses is printed)

JSON results go under artifacts/stress/.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.bench_lte import CF_TRAIN, COUNTERFACT, WIKIBIO

OUT = Path("artifacts/stress")


def _table(rows: list[dict], methods: list[str], column: str, columns: list, header: list[str] | None = None,
           digits: int = 2) -> None:
    """Print a markdown table of rows' values: one row per method, one column per value of `column`."""
    value = {(r["method"], r[column]): r["value"] for r in rows}
    print("| method | " + " | ".join(header or [str(c) for c in columns]) + " |")
    for m in methods:
        print(f"| {m} | " + " | ".join(f"{value[(m, c)]:.{digits}f}" for c in columns) + " |")


def _save(name: str, payload) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(payload, indent=1))


def conflicts(args) -> None:
    from kedit_teach import stress
    from kedit_teach.data import load_counterfact, load_teach
    from kedit_teach.models import load_model
    from kedit_teach.prompt_learning import TEACH_HELD_OUT
    # cases no trained method (LTE, RECIPE) saw in training
    cases = load_teach()[:TEACH_HELD_OUT] if args.data == "teach" else load_counterfact(COUNTERFACT)
    pairs = stress.conflict_pairs(cases)[:args.pairs]
    model, tok = load_model()
    t = time.perf_counter()
    shares, answers, model = stress.conflicts(model, tok, pairs, args.methods, settings={}, shown=3)
    print(f"{len(pairs)} pairs from {args.data}, {2 * len(pairs)} edits standing together per method "
          f"({time.perf_counter() - t:.0f} s in all)")
    value = {(r["method"], r["kind"], r["outcome"]): r["value"] for r in shares}
    kinds = sorted({r["kind"] for r in shares})
    print("| method | " + " | ".join(f"{k}: latest / first / neither" for k in kinds) + " |")
    for m in args.methods:
        print(f"| {m} | " + " | ".join(" / ".join(f"{value[(m, k, o)]:.2f}" for o in stress.OUTCOMES) for k in kinds) + " |")
    for a in answers:
        print(f"  {a['method']:7s} {a['prompt']!r}: first {a['first']!r}, latest {a['latest']!r} -> {a['answer']!r} ({a['outcome']})")
    _save(f"conflicts-{args.data}-{len(pairs)}", {"shares": shares, "answers": answers})


def distractors(args) -> None:
    from kedit_teach import stress
    from kedit_teach.data import disjoint_subjects, load_counterfact
    from kedit_teach.models import load_model
    background = load_counterfact(CF_TRAIN)[:max(args.sizes)]
    probes = disjoint_subjects(load_counterfact(COUNTERFACT), background)[:args.probes]
    model, tok = load_model()
    t = time.perf_counter()
    changed, answers, model = stress.distractors(model, tok, probes, background, args.sizes, args.methods, settings={})
    print(f"{len(probes)} questions about unedited CounterFact subjects; share of answers changed by the store "
          f"({time.perf_counter() - t:.0f} s in all)")
    _table(changed, args.methods, "stored", args.sizes, [f"{n} stored" for n in args.sizes], digits=3)
    for a in answers:
        print(f"  {a['method']:7s} {a['prompt']!r}: {a['before']!r} -> {a['after']!r}")
    _save(f"distractors-{len(probes)}", {"changed": changed, "answers": answers})


def paraphrases(args) -> None:
    from kedit_teach import stress
    from kedit_teach.data import load_counterfact
    from kedit_teach.models import load_model
    cases = load_counterfact(COUNTERFACT, n=args.cases)
    model, tok = load_model()
    t = time.perf_counter()
    rows, model = stress.paraphrases(model, tok, cases, args.methods, bins=args.bins, settings={})
    print(f"{sum(len(c.rephrase_prompts) for c in cases)} rephrasings of {len(cases)} CounterFact edits; share "
          f"answered with the new target, by MiniLM cosine to the knowledge sentence ({time.perf_counter() - t:.0f} s in all)")
    _table(rows, args.methods, "bin", list(range(args.bins)), [r["similarity"] for r in rows if r["method"] == args.methods[0]])
    _save(f"paraphrases-{len(cases)}", rows)


def multi_hop(args) -> None:
    from kedit_teach import stress
    from kedit_teach.data import load_cases, load_teach
    from kedit_teach.models import load_model
    from kedit_teach.prompt_learning import TEACH_HELD_OUT
    model, tok = load_model()
    for data in args.data:
        # cases no trained method saw in training (the held-out teaching cases; ZsRE's test split)
        cases = load_teach()[:TEACH_HELD_OUT] if data == "teach" else load_cases("zsre-held-out", n=args.n, seed=0)
        t = time.perf_counter()
        shares, answers, model = stress.multi_hop(model, tok, cases, args.methods, settings={}, shown=3)
        print(f"\n{data}: {len(cases)} edits, {sum(len(c.portability) for c in cases)} portability questions "
              f"({time.perf_counter() - t:.0f} s in all)")
        _table(shares, args.methods, "outcome", list(stress.HOP_OUTCOMES))
        for a in answers:
            print(f"  {a['method']:7s} {a['question']!r} (new {a['new']!r}): {a['before']!r} -> {a['answer']!r} ({a['outcome']})")
        _save(f"multi_hop-{data}-{len(cases)}", {"shares": shares, "answers": answers})


def long_form(args) -> None:
    from kedit_teach import stress
    from kedit_teach.data import load_wikibio
    from kedit_teach.models import load_model
    every = load_wikibio(WIKIBIO)
    fits = stress.encoder_fits(every)
    cases = fits[:args.n]
    print(f"WikiBio: {len(fits)} of {len(every)} knowledge sentences fit RECIPE's encoder; {len(cases)} edits")
    model, tok = load_model()
    t = time.perf_counter()
    rows, answers, model = stress.long_form(model, tok, cases, args.methods, settings={}, shown=2)
    print(f"{len(cases)} passages, {sum(len(c.locality) for c in cases)} locality questions "
          f"({time.perf_counter() - t:.0f} s in all)")
    _table(rows, args.methods, "measure", list(stress.LONG_MEASURES))
    for a in answers:
        print(f"  {a['method']:7s} ...{a['passage'][-50:]!r}\n          target {a['target']!r}\n          "
              f"answer {a['answer']!r} (recall {a['recall']:.2f})")
    _save(f"long_form-{len(cases)}", {"rows": rows, "answers": answers, "fit": len(fits), "of": len(every)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(required=True)
    c = sub.add_parser("conflicts")
    c.add_argument("--pairs", type=int, default=40)
    c.add_argument("--data", choices=["teach", "counterfact"], default="teach")
    c.add_argument("--methods", nargs="+", default=["ice", "ft-l", "grace", "lte", "recipe"])
    c.set_defaults(fn=conflicts)
    d = sub.add_parser("distractors")
    d.add_argument("--probes", type=int, default=200)
    d.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    d.add_argument("--methods", nargs="+", default=["lte", "recipe"])
    d.set_defaults(fn=distractors)
    f = sub.add_parser("paraphrases")
    f.add_argument("--cases", type=int, default=100)
    f.add_argument("--bins", type=int, default=4)
    f.add_argument("--methods", nargs="+", default=["ice", "grace", "lte", "recipe"])
    f.set_defaults(fn=paraphrases)
    h = sub.add_parser("multi_hop")
    h.add_argument("--data", nargs="+", choices=["teach", "zsre"], default=["teach", "zsre"])
    h.add_argument("--n", type=int, default=100, help="ZsRE edits")
    h.add_argument("--methods", nargs="+", default=["ice", "grace", "lte", "recipe"])
    h.set_defaults(fn=multi_hop)
    w = sub.add_parser("long_form")
    w.add_argument("--n", type=int, default=50, help="WikiBio edits")
    w.add_argument("--methods", nargs="+", default=["noedit", "ice", "ft-l", "grace", "lte", "recipe", "rome"])
    w.set_defaults(fn=long_form)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
