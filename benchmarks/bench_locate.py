"""Locate-then-edit benchmarks on Gemma-3-270M, each measured in one run (compare ratios, not seconds).

    python -m benchmarks.bench_locate trace    time of one causal trace per kind (hidden / mlp / attn)
    python -m benchmarks.bench_locate stats    [--n 20] [--corpora model model-more names wikibio]  layer statistics
                                               cold and cached; single-edit ROME with C from the default corpus
                                               (the model's own text, 4 x d_k keys), from as many keys of it as
                                               WikiBio gives, from the model's text after openers that name
                                               people, places and companies, and from WikiBio passages
    python -m benchmarks.bench_locate single   [--n 100] [--variants r ref]  single-edit ROME (r-ROME's key, the reference's two)
                                               on CounterFact from ../shared, all protocols, time per edit
    python -m benchmarks.bench_locate layers   [--n 20] [--layers 1 3 5 7 9 11]  edit success at each layer
                                               against the causal trace at the subject's last token
    python -m benchmarks.bench_locate sequential [--n 100] [--checkpoints 10 100] [--methods rome memit alphaedit]
                                               [--batch 1]  the collapse curve: all edits so far, both protocols,
                                               the perplexity of a fixed passage and the weight norm;
                                               the editor is saved at each checkpoint (artifacts/locate/state-*),
                                               and a stopped run, started again, goes on from the last one
    python -m benchmarks.bench_locate general  FOLDER [FOLDER ...]  general ability (general.py: the questions
                                               and the long passage) of saved lifelong states, e.g. a
                                               sequential run's state folder, or a copy of it taken at a checkpoint

JSON results go under artifacts/locate/.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_lte import COUNTERFACT, HEADER, _evaluate, _row

OUT = Path("artifacts/locate")
PROMPT, SUBJECT = "The Eiffel Tower is located in the city of", "Eiffel Tower"


def trace(args) -> None:
    from kedit_teach.models import load_model
    from kedit_teach.tracing import KINDS, trace as run
    model, tok = load_model()
    run(model, tok, PROMPT, SUBJECT, samples=2, progress=False)  # warm-up (noise level, allocator)
    for kind in KINDS:
        t = time.perf_counter()
        tr = run(model, tok, PROMPT, SUBJECT, kind=kind, progress=False)
        print(f"causal trace ({kind}, {len(tr.tokens)} tokens x {tr.scores.shape[1]} layers, 10 noisy copies): "
              f"{time.perf_counter() - t:.1f} s; p clean {tr.p_clean:.3f}, corrupted {tr.p_corrupt:.3f}, "
              f"best restored {tr.scores.max():.3f}", flush=True)


def _cases(n: int):
    from kedit_teach.data import load_counterfact
    return load_counterfact(COUNTERFACT, n=n)


def stats(args) -> None:
    from kedit_teach import layer_stats
    from kedit_teach.editors.rome import ROME, default_rome_layer
    from kedit_teach.models import load_model
    model, tok = load_model()
    layer = default_rome_layer(model)
    t = time.perf_counter()
    cold = layer_stats.second_moment(model, tok, layer, cache=False)
    cold_s = time.perf_counter() - t
    layer_stats.second_moment(model, tok, layer)  # computed and written, unless already there
    t = time.perf_counter()
    layer_stats.second_moment(model, tok, layer)
    cached_s = time.perf_counter() - t
    print(f"layer {layer} statistics, corpus 'model', {cold.n_keys} keys: cold {cold_s:.1f} s (sampling the text "
          f"included), cached {cached_s:.2f} s", flush=True)
    cases = _cases(args.n)
    rows = {"model": ("model", None), "model-more": ("model", None), "names": ("names", None),
            "wikibio": ("wikibio", 10 ** 6)}  # WikiBio: every key it has (29k)
    print(HEADER)
    for label in args.corpora:
        corpus, n_keys = rows[label]
        if label == "model-more":  # the model's own text, as many keys as WikiBio: amount vs kind of text
            n_keys = layer_stats.second_moment(model, tok, layer, corpus="wikibio", n_keys=10 ** 6).n_keys
        editor = ROME(model, tok, corpus=corpus, n_keys=n_keys)
        n = layer_stats.second_moment(model, tok, layer, corpus=corpus, n_keys=n_keys).n_keys
        result = _evaluate(editor, cases, f"rome-stats-{label}-n{args.n}", OUT, mode="single")
        print(f"| ROME, C from {corpus} ({n} keys) | {_row(result)}", flush=True)
        editor.detach()


def single(args) -> None:
    from kedit_teach.editors.rome import ROME
    from kedit_teach.models import load_model
    model, tok = load_model()
    cases = _cases(args.n)
    print(HEADER)
    for consistent in [v == "r" for v in args.variants]:
        editor = ROME(model, tok, consistent_key=consistent)
        name = "r-ROME (one key)" if consistent else "ROME (the reference's two keys)"
        result = _evaluate(editor, cases, f"rome-single-{'r' if consistent else 'ref'}-n{args.n}", OUT, mode="single")
        print(f"| {name} | {_row(result)}", flush=True)
        editor.detach()


def layers(args) -> None:
    """Per fact: the traced p at the subject's last token, restored at layer l (MLP outputs), and how
    well a ROME edit at layer l works (`rome.trace_and_edit`): the new target exact under teacher
    forcing (reliability, often 1 at every layer) and the mean token accuracy on the rephrasings
    (generality, which varies)."""
    from kedit_teach.editors.rome import trace_and_edit
    from kedit_teach.models import load_model
    model, tok = load_model()
    cases = _cases(args.n)
    rows = trace_and_edit(model, tok, cases, args.layers)
    for l in args.layers:
        mine = [r for r in rows if r["layer"] == l]
        print(f"layer {l:>2}: ROME reliability {np.mean([r['reliability'] for r in mine]):.2f}, generality "
              f"{np.mean([r['generality'] for r in mine]):.2f}, traced MLP effect "
              f"{np.mean([r['traced effect'] for r in mine]):.3f}", flush=True)
    e = np.array([r["traced effect"] for r in rows])
    r = {}
    for k in ("reliability", "generality"):
        s = np.array([row[k] for row in rows])
        r[k] = float(np.corrcoef(e, s)[0, 1]) if e.std() and s.std() else float("nan")
    print(f"correlation of the traced MLP effect with edit success over {len(cases)} facts x {len(args.layers)} layers: "
          + ", ".join(f"{k} r = {v:.2f}" for k, v in r.items()))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"layers-n{args.n}.json").write_text(json.dumps({"layers": args.layers, "rows": rows, "r": r}, indent=1))


def sequential(args) -> None:
    """Lifelong editing with each method on one loaded model, one after the other (detached between)."""
    from kedit_teach.editors import METHODS
    from kedit_teach.evaluate import curve
    from kedit_teach.models import load_model
    model, tok = load_model()
    cases = _cases(args.n)
    print("| method | edits | teacher-forced rel/gen/loc | generation rel/gen/loc | perplexity (unedited) | |W| (unedited) | s/edit |\n"
          "|---|---|---|---|---|---|---|", flush=True)
    path = OUT / f"sequential-n{args.n}-b{args.batch}.json"
    OUT.mkdir(parents=True, exist_ok=True)
    out = json.loads(path.read_text()) if path.exists() else {}  # other methods' runs are kept
    for name in args.methods:
        editor = METHODS[name](model, tok)
        original = editor.inspect(cases[0].prompt)["original_norm"]

        def show(p, name=name, original=original):
            m = p["metrics"]
            cells = ["/".join(f"{m[proto][k]:.2f}" for k in ("reliability", "generality", "locality"))
                     for proto in ("teacher_forced", "generation")]
            print(f"| {name} | {p['n_edits']} | {cells[0]} | {cells[1]} | {p['perplexity']:.1f} ({p['perplexity_unedited']:.1f}) "
                  f"| {p['weight_norm']:.1f} ({original:.1f}) | {p['edit_s_mean']:.1f} |", flush=True)

        state = OUT / f"state-{name}-n{args.n}-b{args.batch}"  # a stopped run goes on from its last checkpoint
        points = curve(editor, cases, args.checkpoints, batch=args.batch, on_point=show, state=state)
        out[name] = {"points": points, "norms": list(editor.norms), "original_norm": original, "config": editor.config()}
        path.write_text(json.dumps(out, indent=1))  # after each method: a long run keeps what it has
        model = editor.detach()


def general(args) -> None:
    """RECIPE's Table 2 for the weight editors: what a lifelong run's saved editor (a `state` folder of
    `evaluate.curve`) still answers of the general questions, and the long passage's perplexity."""
    from kedit_teach.editors import METHODS
    from kedit_teach.evaluate import CURVE_JSON
    from kedit_teach.general import general_ability
    from kedit_teach.models import load_model
    model, tok = load_model()
    path = OUT / "general.json"
    out = json.loads(path.read_text()) if path.exists() else {}
    print("| method | edits | questions teacher-forced / generation | perplexity | state |\n|---|---|---|---|---|")
    for folder in [None, *map(Path, args.folders)]:  # None: the unedited model, the baseline row
        method = json.loads((folder / CURVE_JSON).read_text())["method"] if folder else "noedit"
        editor = METHODS[method](model, tok)
        if folder:
            editor.load(folder)
        g = general_ability(editor)
        q = g["questions"]
        print(f"| {method} | {len(editor.cases)} | {q['teacher_forced']:.2f} / {q['generation']:.2f} "
              f"| {g['perplexity']:.1f} | {folder or 'unedited'} |", flush=True)
        out[f"{method}-{len(editor.cases)}"] = {**g, "state": str(folder) if folder else None}
        model = editor.detach()
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("trace").set_defaults(fn=trace)
    for name, fn, n in (("stats", stats, 20), ("single", single, 100), ("layers", layers, 20)):
        p = sub.add_parser(name)
        p.add_argument("--n", type=int, default=n)
        if name == "single":
            p.add_argument("--variants", nargs="+", default=["r", "ref"], choices=["r", "ref"],
                           help="r: r-ROME's one key; ref: the reference code's two keys")
        if name == "stats":
            p.add_argument("--corpora", nargs="+", default=["model", "model-more", "names", "wikibio"],
                           choices=["model", "model-more", "names", "wikibio"],
                           help="model-more: the model's own text, as many keys as WikiBio gives")
        if name == "layers":
            p.add_argument("--layers", type=int, nargs="+", default=[1, 3, 5, 7, 9, 11])
        p.set_defaults(fn=fn)
    p = sub.add_parser("sequential")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--checkpoints", type=int, nargs="+", default=[10, 100])
    p.add_argument("--methods", nargs="+", default=["rome", "memit", "alphaedit"])
    p.add_argument("--batch", type=int, default=1, help="edits per edit() call (MEMIT and AlphaEdit solve a batch at once)")
    p.set_defaults(fn=sequential)
    p = sub.add_parser("general")
    p.add_argument("folders", nargs="+", help="state folders written by `sequential` (artifacts/locate/state-*)")
    p.set_defaults(fn=general)
    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
