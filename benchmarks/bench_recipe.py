"""RECIPE benchmarks, each measured in one run on this machine (compare ratios, not seconds).

    python -m benchmarks.bench_recipe speed     [--course] edit time per edit; inference per query with 0 / 1,000 /
                                                10,000 stored edits against the unedited model
    python -m benchmarks.bench_recipe sentinel  decision accuracy with CounterFact's 1,000, ZsRE's held-out
                                                part and the held-out teaching cases stored: own knowledge for
                                                edit prompts and rephrasings, nothing for locality prompts
                                                ([--methods recipe serac]: SERAC's scope classifier beside it)
    python -m benchmarks.bench_recipe relation  [--stored 10000]  what the relation check costs a query, with
                                                ZsRE's held-out edits stored (and CounterFact-train's up to
                                                --stored); its decisions: sentinel --methods recipe recipe-relation
    python -m benchmarks.bench_recipe options   [--steps 3000]  the sentinel's rates after retrieval-only
                                                training with a memory bank, mined neighbours, more locality
                                                prompts, all three, or none
    python -m benchmarks.bench_recipe fluency   generations with every edit stored: fluency, repetition, the
                                                new answer said, the old one said after it, against the unedited
                                                model and ICE, RECIPE's prompt kept to the end or dropped after
                                                the answer (until_answer), with and without the statement in front
    python -m benchmarks.bench_recipe compare   [--n 100] [--methods recipe lte grace serac] [--data ... teach]
                                                sequential CounterFact edits (and ZsRE's held-out part with
                                                portability; the held-out teaching cases), all protocols
    python -m benchmarks.bench_recipe lengths   [--n 100] [--methods recipe ice lte recipe-statement]  exact
                                                answers by the new answer's length in tokens, ZsRE's held-out edits
                                                one at a time: RECIPE's prompt against the fact as text in context
    python -m benchmarks.bench_recipe ablation  [--n 100]  Table 4's rows: without the sentinel, the
                                                continuous prompt, or both
    python -m benchmarks.bench_recipe encoder   [--steps 300] [--widths 256] [--frozen-steps N ..]  frozen vs
                                                fine-tuned MiniLM (the retrieval part alone, from scratch)

The CounterFact and ZsRE edits come from ../shared (ZsRE: the held-out part of `data.ZSRE_SPLIT`);
their subjects never occur in the modules' training data (`prompt_learning.held_out_cases`). JSON results go under artifacts/recipe/.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.bench_lte import COUNTERFACT, CF_TRAIN, HEADER, _evaluate, _row
from kedit_teach.data import one_per_subject

OUT = Path("artifacts/recipe")


def _recipe(model, tok, **kw):
    from kedit_teach.editors import RECIPE
    return RECIPE(model, tok, **kw)


def _median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def _encoder_passes(modules, texts: list[str]) -> tuple[float, float]:
    """Median ms of one-sentence f_rm passes: the fp32 encoder traced as is, and the editor's trace
    (a frozen bfloat16 copy where the CPU has bfloat16), alternating so drift hits both."""
    from kedit_teach.prompt_learning import trace_encoder
    fp32 = trace_encoder(modules.encoder, modules.tokenizer, half=False)
    used = modules.traced_encoder()
    times = {"fp32": [], "used": []}
    with torch.inference_mode():
        for text in texts:
            enc = modules.tokenizer([text], return_tensors="pt")
            for name, f in (("fp32", fp32), ("used", used)):
                t = time.perf_counter()
                f(enc["input_ids"], enc["attention_mask"])
                times[name].append(time.perf_counter() - t)
    return _median_ms(times["fp32"]), _median_ms(times["used"])


def speed(args) -> None:
    """Inference: score + generate 64 CounterFact prompts (edit prompts, rephrasings, locality prompts),
    five rounds of fresh ones, with the store filled by real CounterFact-train descriptors (timing.py)."""
    from kedit_teach import timing
    from kedit_teach.data import load_counterfact
    from kedit_teach.editors import NoEdit
    from kedit_teach.editors.recipe import COURSE_OPTIONS
    from kedit_teach.models import load_model
    model, tok = load_model()
    recipe = _recipe(model, tok, **(COURSE_OPTIONS if args.course else {}))
    edits = load_counterfact(COUNTERFACT, n=310)
    fp32, used = _encoder_passes(recipe.modules, [c.descriptor for c in edits[:200]])
    print(f"f_rm, one knowledge sentence: fp32 trace {fp32:.2f} ms, the editor's trace {used:.2f} ms "
          f"= {used / fp32:.2f}x ({torch.get_num_threads()} threads)")
    one = []
    for c in edits[:200]:
        (info,) = recipe.edit(c)
        one.append(info["edit_s"])
    recipe.reset()
    t = time.perf_counter()
    recipe.edit(edits[:200])
    batched = (time.perf_counter() - t) / 200
    print(f"edit time: {_median_ms(one):.2f} ms per edit (median of 200 single edits), "
          f"{1000 * batched:.2f} ms per edit in one batch of 200")
    rounds = timing.probes(edits[200:], rounds=5, per_round=64)
    noedit = NoEdit(model, tok)
    background = load_counterfact(CF_TRAIN)
    recipe.reset()
    print("inference per query (score + 8-token generation), each against the unedited model in alternation:")
    for stored in (0, 1000, 10000):
        if stored:
            recipe.edit([c for c in background[len(recipe.memory):stored]])
        r, base = timing.measure(recipe, noedit, rounds)
        attached = sum(x is not None for prompts, _ in rounds for x in (recipe.prompt_prefixes(prompts) or []))
        print(f"  RECIPE with {stored:>6} stored edits: {1000 * r:.1f} ms vs {1000 * base:.1f} ms = {r / base:.3f}x "
              f"({attached} of {5 * 64} queries got a prompt)", flush=True)


# the sentinel's test sets: CounterFact's first 1,000 edits, ZsRE's held-out part (whole, and its
# first edit of each subject: the whole part edits some facts several times, with different
# answers), the held-out teaching cases; (spec, edits, keep)
SENTINEL_DATA = {"counterfact": (f"counterfact:{COUNTERFACT}", 1000, None), "zsre": ("zsre-held-out", None, None),
                 "zsre-one-per-subject": ("zsre-held-out", None, one_per_subject), "teach": ("teach", 64, None)}


def _sentinel_rates(editor, data: list[str], stored: int | None = None) -> dict:
    """The sentinel's three rates (own prompt for edit prompts and rephrasings, none for locality
    prompts) with each data set's edits stored, one data set at a time; the editor is reset."""
    from kedit_teach.data import load_cases
    from kedit_teach.editors.recipe import gate_sweep, labelled_queries
    out = {}
    for name in data:
        spec, n, keep = SENTINEL_DATA[name]
        cases = keep(load_cases(spec))[:stored or n] if keep else load_cases(spec, n=stored or n)
        editor.reset()
        editor.edit(cases)
        out[name] = gate_sweep(editor, labelled_queries(cases))
        editor.reset()
    return out


def sentinel(args) -> None:
    """RECIPE's sentinel, and SERAC's scope classifier beside it (--methods recipe serac), decide on
    the same queries with the same edits stored."""
    from kedit_teach.editors.serac import SERAC
    from kedit_teach.models import load_model
    model, tok = load_model()
    make = {"recipe": lambda: _recipe(model, tok, modules=args.modules),
            "recipe-relation": lambda: _recipe(model, tok, modules=args.modules, relation_check=True),
            "serac": lambda: SERAC(model, tok, classifier=args.classifier)}
    results = {}
    for method in args.methods:
        results[method] = _sentinel_rates(make[method](), args.data, args.stored)
        rule = {"recipe": "sentinel", "recipe-relation": "+ relation check"}.get(method, "SERAC's classifier (p > 0.5)")
        _print_decisions(results[method], rule)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "sentinel.json").write_text(json.dumps(results["recipe"] if args.methods == ["recipe"] else results, indent=1))


def relation(args) -> None:
    """What the relation check costs a query: with ZsRE's held-out edits stored (--stored: and
    CounterFact-train's up to that many), score + 8 generated tokens per probe (ZsRE's edit prompts,
    rephrasings, locality prompts: nearly all name a stored subject; five rounds), RECIPE with the
    check and without it against the unedited model, in alternation."""
    from kedit_teach import timing
    from kedit_teach.data import load_cases, load_counterfact
    from kedit_teach.editors import NoEdit
    from kedit_teach.models import load_model
    model, tok = load_model()
    cases = load_cases("zsre-held-out")
    recipe, noedit = _recipe(model, tok), NoEdit(model, tok)
    recipe.edit(cases)
    if args.stored > len(cases):  # their ids are numbers too: keep them apart from ZsRE's
        recipe.edit([replace(c, case_id=f"counterfact-train-{c.case_id}")
                     for c in load_counterfact(CF_TRAIN)[:args.stored - len(cases)]])
    rounds = timing.probes(cases, rounds=6, per_round=64)
    timing.measure(recipe, noedit, rounds[:1])  # warm-up: the first passes
    recipe.relation_check = True  # loaded now, so its loading is not timed
    recipe.relation_check = False
    print(f"{len(recipe.memory)} edits stored ({len(cases)} of ZsRE's); seconds per probe (score + 8 tokens), "
          "median of 5 rounds of 64:")
    for on in (False, True):
        recipe.relation_check = on  # clears the cached decisions, so every round decides afresh
        r, base = timing.measure(recipe, noedit, rounds[1:])
        checked = sum(d.relation is not None for prompts, _ in rounds[1:] for d in recipe.retrieve(prompts))
        print(f"  RECIPE{' + relation check' if on else ''}: {1000 * r:.1f} ms vs {1000 * base:.1f} ms unedited = "
              f"{r / base:.3f}x" + (f" ({checked} of {5 * 64} probes named a stored subject)" if on else ""), flush=True)


def _print_decisions(sweeps: dict, rule: str) -> None:
    for name, sweep in sweeps.items():
        best = sweep["best"]
        print(f"{name}, {sweep['stored']} edits stored: decisions (edit prompt / rephrasing / locality right)")
        print(f"  {rule + ':':22s} " + "  ".join(f"{k} {v:.3f}" for k, v in sweep["sentinel"].items()))
        print(f"  best fixed t = {best['threshold']:5.2f}:   " + "  ".join(f"{k} {best[k]:.3f}" for k in sweep["kinds"]))
        print("  the sentinel's errors: " + "  ".join(
            f"{k}: {e['other']} another's prompt ({e['same answer']} with the same answer), {e['none']} none"
            for k, e in sweep["errors"].items()))
        print("  the right answer's prompt (own, or another edit with the same answer): "
              + "  ".join(f"{k} {v:.3f}" for k, v in sweep["answer"].items()))


def options(args) -> None:
    """The retrieval part alone (L_pl), trained from scratch under each option on the same data and
    steps, judged by the sentinel's three rates on CounterFact (1,000 stored), ZsRE's held-out part
    and the held-out teaching cases."""
    import dataclasses

    from kedit_teach import prompt_learning as pl
    from kedit_teach.models import load_model
    model, tok = load_model()
    examples, record = pl.training_examples()
    bare = [dataclasses.replace(e, more_locality=()) for e in examples]
    rows = {"all three": ({"bank": args.bank, "neighbours": args.neighbours}, examples),
            "in-batch negatives (256)": ({}, bare),
            f"+ memory bank ({args.bank} keys)": ({"bank": args.bank}, bare),
            f"+ mined neighbours ({args.neighbours} per seed)": ({"neighbours": args.neighbours}, bare),
            "+ every locality prompt to the sentinel": ({}, examples)}
    print(f"retrieval only, {args.steps} steps from scratch, {len(examples)} training examples "
          f"({', '.join(record['sources'])}); sentinel's rates edit / rephrasing / locality:")
    results, cache = {}, pl.stored_features(pl.RecipeModules(pl.ModuleConfig.for_model(model)))
    for label, (kw, data) in rows.items():
        if args.only and not any(o in label for o in args.only):
            continue
        modules = pl.RecipeModules(pl.ModuleConfig.for_model(model))
        t = time.perf_counter()
        cfg = pl.TrainConfig(steps=args.steps, edit_loss=False, **kw)
        curves = pl.train_modules(modules, model, tok, data, cfg, cache=cache)
        seconds = time.perf_counter() - t
        pl.store_features(modules, cache)
        if args.keep and label == "all three":  # a retrieval part to train prompts on (`train recipe --resume`)
            pl.save_modules(modules, args.keep, pl.make_record(modules, "gemma-3-270m", cfg, record, curves, seconds))
        sweeps = _sentinel_rates(_recipe(model, tok, modules=modules), args.data)
        results[label] = {"seconds": seconds, **{k: v["sentinel"] for k, v in sweeps.items()}}
        print(f"  {label:42s} " + "  ".join(f"{k}: " + " / ".join(f"{x:.3f}" for x in v["sentinel"].values())
                                            for k, v in sweeps.items()) + f"  ({seconds / 60:.1f} min)", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"sentinel-options-{args.steps}.json").write_text(json.dumps(results, indent=1))


def fluency(args) -> None:
    """Generations from the edit prompts with every edit of the set stored, so RECIPE attaches a
    prompt wherever its sentinel fires: fluency (n-gram entropy), repetition, and how often the new
    answer is said, beside the unedited model and ICE on the same prompts."""
    from kedit_teach.data import load_cases
    from kedit_teach.editors import ICE, NoEdit
    from kedit_teach.evaluate import fluency_report
    from kedit_teach.models import load_model
    model, tok = load_model()
    specs = {"teach": "teach", "counterfact": f"counterfact:{COUNTERFACT}", "zsre": "zsre-held-out"}
    out = {}
    for data in args.data:
        cases = load_cases(specs[data], n=64 if data == "teach" else args.n, seed=None if data == "teach" else 0)
        print(f"\n{data}: {len(cases)} edit prompts, {args.tokens} new tokens each, every edit stored")
        print("| editor | fluency (x100) | vs unedited | repetition (3-grams) | begins with the new answer "
              "| names the old answer after the new |")
        print("|---|---|---|---|---|---|")
        rows = {}
        for label, make in (("unedited", lambda: NoEdit(model, tok)), ("ICE", lambda: ICE(model, tok)),
                            ("RECIPE", lambda: _recipe(model, tok, modules=args.modules)),
                            ("RECIPE until the answer", lambda: _recipe(model, tok, modules=args.modules, until_answer=True)),
                            ("RECIPE + statement", lambda: _recipe(model, tok, modules=args.modules, statement=True)),
                            ("RECIPE + statement until the answer",
                             lambda: _recipe(model, tok, modules=args.modules, statement=True, until_answer=True))):
            editor = make()
            editor.edit(cases)
            rows[label] = r = fluency_report(editor, cases, args.tokens)
            model = editor.detach()
            r["ratio"] = r["fluency_x100"] / rows["unedited"]["fluency_x100"]
            old = "–" if r["old_after_new"] is None else f"{r['old_after_new']:.2f}"
            print(f"| {label} | {r['fluency_x100']:.1f} | {r['ratio']:.3f} | {r['repetition']:.3f} | {r['answer']:.2f} "
                  f"| {old} |", flush=True)
        for label, r in rows.items():
            print(f"  {label}: {cases[0].prompt} |{r['texts'][0][:120]!r}")
        out[data] = rows
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "fluency.json").write_text(json.dumps(out, indent=1, ensure_ascii=False))


def _editors(model, tok, methods: list[str]) -> dict:
    from kedit_teach.editors import GRACE, LTE
    from kedit_teach.memory import VectorMemory
    from kedit_teach.models import load_encoder
    from kedit_teach.editors.serac import SERAC
    make = {"recipe": lambda: _recipe(model, tok), "lte": lambda: LTE(model, tok, VectorMemory(load_encoder())),
            "grace": lambda: GRACE(model, tok), "serac": lambda: SERAC(model, tok),  # LTE's adapter reads the edit
            "serac-prompt": lambda: SERAC(model, tok, counterfactual="prompt")}
    return {m: make[m]() for m in methods}


def compare(args) -> None:
    """One loaded model; each method edits, is scored, and leaves the model as it found it."""
    from kedit_teach import prompt_learning as pl
    from kedit_teach.data import load_cases
    from kedit_teach.models import load_model
    model, tok = load_model()
    for data, spec in (("counterfact", f"counterfact:{COUNTERFACT}"), ("zsre", "zsre-held-out"), ("teach", "teach")):
        if data not in args.data:
            continue
        # the teaching set: its held-out cases only (the rest trained RECIPE), all of them at most
        cases = load_cases(spec, n=args.n, seed=0) if data != "teach" else \
            load_cases("teach", n=pl.TEACH_HELD_OUT)[:args.n]
        print(f"\n{data}, {len(cases)} sequential edits\n{HEADER}", flush=True)
        for method in args.methods:
            editor = _editors(model, tok, [method])[method]
            r = _evaluate(editor, cases, f"{data}-{method}-n{len(cases)}", OUT, spec=spec)
            print(f"| {method} | {_row(r)} |", flush=True)
            model = editor.detach()


def ablation(args) -> None:
    """The fixed threshold of "- KS" is the sentinel's own score averaged over the queries of the
    run: the same level on average, without its per-query adaptation."""
    from kedit_teach.data import load_cases
    from kedit_teach.models import load_model
    model, tok = load_model()
    cases = load_cases(f"counterfact:{COUNTERFACT}", n=args.n, seed=0)
    probe = _recipe(model, tok)
    probe.edit(cases)
    queries = [p for c in cases for p in (c.prompt, *c.rephrase_prompts, *(q for q, _ in c.locality))]
    level = sum(d.sentinel for d in probe.retrieve(queries)) / len(queries)
    rows = {"RECIPE": {}, "- KS (fixed threshold)": {"sentinel": False, "threshold": level},
            "- CPT (retrieval, no prompt)": {"prompts": False},
            "- both": {"sentinel": False, "threshold": level, "prompts": False}}
    print(f"ablation, {len(cases)} sequential CounterFact edits; fixed threshold = {level:.3f}\n{HEADER}")
    for label, kw in rows.items():
        r = _evaluate(_recipe(model, tok, **kw), cases, f"ablation-{label.split(' (')[0].replace(' ', '')}-n{args.n}", OUT)
        print(f"| {label} | {_row(r)} |", flush=True)


def encoder(args) -> None:
    """Only the retrieval part (L_pl) is trained here, from scratch for each row, and judged by the
    sentinel's decisions with 1,000 CounterFact edits stored."""
    from kedit_teach import prompt_learning as pl
    from kedit_teach.data import load_counterfact
    from kedit_teach.editors.recipe import gate_sweep, labelled_queries
    from kedit_teach.models import load_model
    model, tok = load_model()
    examples, _ = pl.training_examples(n=args.examples)
    cases = load_counterfact(COUNTERFACT, n=1000)
    queries = labelled_queries(cases)
    print(f"retrieval only, contrastive batch {args.batch}, {len(examples)} training examples; "
          "decisions with 1000 stored edits")
    rows = [(f, d, s) for d in args.widths for f in (False, True)
            for s in ([args.steps] + [n for n in args.frozen_steps if not f and n != args.steps])]
    for finetune, d_rep, steps in rows:
        modules = pl.RecipeModules(pl.ModuleConfig.for_model(model, d_rep=d_rep, finetune_encoder=finetune))
        t = time.perf_counter()
        pl.train_modules(modules, model, tok, examples,
                         pl.TrainConfig(steps=steps, contrastive_batch=args.batch, edit_loss=False))
        seconds = time.perf_counter() - t
        editor = _recipe(model, tok, modules=modules)
        editor.edit(cases)
        acc = gate_sweep(editor, queries, [0.0])["sentinel"]
        size = sum(v.numel() * 4 for v in modules.trained_state().values()) / 2 ** 20
        print(f"  {'fine-tuned' if finetune else 'frozen':10s} MiniLM, d_rep {d_rep:4d}, {steps:5d} steps: "
              + "  ".join(f"{k} {v:.3f}" for k, v in acc.items())
              + f"  ({seconds / 60:.1f} min, {size:.1f} MB of weights)", flush=True)


LENGTH_BINS = ("1", "2", "3", "4", "5", "6+")


def lengths(args) -> None:
    """Generation exact match of edit questions and rephrasings by the new answer's length in tokens,
    on ZsRE's held-out part, one edit at a time (only the edit's own fact stored, so retrieval is not
    in question): does a method carry a long answer?"""
    from kedit_teach.data import load_cases
    from kedit_teach.editors import METHODS
    from kedit_teach.editors.recipe import answer_tokens
    from kedit_teach.evaluate import evaluate
    from kedit_teach.models import load_model

    model, tok = load_model()
    cases = load_cases("zsre-held-out")[:args.n]
    tokens = {c.case_id: answer_tokens(tok, c.target_new) for c in cases}
    size = lambda case_id: LENGTH_BINS[min(tokens[case_id], len(LENGTH_BINS)) - 1]  # noqa: E731
    count = {b: sum(size(c.case_id) == b for c in cases) for b in LENGTH_BINS}
    print(f"{len(cases)} ZsRE held-out edits, generation exact match by answer tokens "
          + " / ".join(LENGTH_BINS) + " (" + " / ".join(str(count[b]) for b in LENGTH_BINS) + " edits)")
    rows = {}
    for name in args.methods:  # recipe-statement: RECIPE with the knowledge statement before its vectors
        method, options = ("recipe", {"statement": True}) if name == "recipe-statement" else (name, {})
        editor = METHODS[method](model, tok, **options)
        result = evaluate(editor, cases, mode="single", fluency_n=0)
        model = editor.detach()
        for kind in ("reliability", "generality"):
            hits = {b: [] for b in LENGTH_BINS}
            for case in result["per_case"]:
                hits[size(case["case_id"])] += [p["generation"] for p in case["probes"] if p["kind"] == kind]
            rows[f"{name} {kind}"] = {b: sum(h) / len(h) if h else None for b, h in hits.items()}
            print(f"  {name:6s} {kind:11s} " + " / ".join("-" if v is None else f"{v:.2f}"
                                                          for v in rows[f"{name} {kind}"].values()), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"lengths-n{args.n}.json").write_text(json.dumps({"edits_per_bin": count, "rows": rows}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    sp = sub.add_parser("speed")
    sp.add_argument("--course", action="store_true", help="RECIPE with COURSE_OPTIONS (the relation check, "
                                                          "until_answer, the statement for long answers)")
    sp.set_defaults(fn=speed)
    s = sub.add_parser("sentinel")
    s.add_argument("--stored", type=int, default=None, help="edits stored (default: CounterFact 1,000, ZsRE's held-out part, teach 64)")
    s.add_argument("--data", nargs="+", default=list(SENTINEL_DATA), choices=list(SENTINEL_DATA))
    s.add_argument("--modules", default="default", help="a modules folder (default: the ones RECIPE loads)")
    s.add_argument("--methods", nargs="+", default=["recipe"], choices=["recipe", "recipe-relation", "serac"],
                   help="recipe-relation: RECIPE's sentinel with the relation check (relation_check.py)")
    s.add_argument("--classifier", default="default", help="serac: a classifier folder (default: the one SERAC loads)")
    s.set_defaults(fn=sentinel)
    r = sub.add_parser("relation")
    r.add_argument("--stored", type=int, default=0, help="edits stored: ZsRE's held-out 434, then CounterFact-train's up to this")
    r.set_defaults(fn=relation)
    o = sub.add_parser("options")
    o.add_argument("--steps", type=int, default=3000)
    o.add_argument("--bank", type=int, default=4096)
    o.add_argument("--neighbours", type=int, default=7)
    o.add_argument("--data", nargs="+", default=list(SENTINEL_DATA), choices=list(SENTINEL_DATA))
    o.add_argument("--only", nargs="*", default=[], help="run only the rows whose label contains one of these")
    o.add_argument("--keep", default=None, help="save the 'all three' modules to this folder")
    o.set_defaults(fn=options)
    f = sub.add_parser("fluency")
    f.add_argument("--data", nargs="+", default=["teach", "counterfact", "zsre"])
    f.add_argument("--n", type=int, default=64, help="edits from CounterFact and ZsRE (teach: its 64 held-out cases)")
    f.add_argument("--tokens", type=int, default=60)
    f.add_argument("--modules", default="default")
    f.set_defaults(fn=fluency)
    c = sub.add_parser("compare")
    c.add_argument("--n", type=int, default=100)
    c.add_argument("--methods", nargs="+", default=["recipe", "lte", "grace"],
                   choices=["recipe", "lte", "grace", "serac", "serac-prompt"])
    c.add_argument("--data", nargs="+", default=["counterfact", "zsre"], choices=["counterfact", "zsre", "teach"])
    c.set_defaults(fn=compare)
    n = sub.add_parser("lengths")
    n.add_argument("--n", type=int, default=100)
    n.add_argument("--methods", nargs="+", default=["recipe", "ice", "lte"],
                   help="methods, or recipe-statement: RECIPE(statement=True)")
    n.set_defaults(fn=lengths)
    a = sub.add_parser("ablation")
    a.add_argument("--n", type=int, default=100)
    a.set_defaults(fn=ablation)
    e = sub.add_parser("encoder")
    e.add_argument("--steps", type=int, default=300)
    e.add_argument("--batch", type=int, default=64, help="contrastive batch (fine-tuning backpropagates through 4x this many texts)")
    e.add_argument("--widths", type=int, nargs="+", default=[256])
    e.add_argument("--frozen-steps", type=int, nargs="*", default=[],
                   help="more rows for the frozen encoder at these step counts (its steps are far cheaper: compare at equal time)")
    e.add_argument("--examples", type=int, default=3000, help="training examples (fewer texts to encode)")
    e.set_defaults(fn=encoder)
    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
