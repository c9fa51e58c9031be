"""The GPU check, ready to run on a CUDA machine (a Colab T4 or A100): every editor on Gemma-3-270M
in fp16, bf16 and 4-bit NF4, and on each 7B preset whose weights are already in the Hugging Face
cache (NF4), one edit each through the tour's turns (`kedit_teach.tour.take_turns`) on one loaded
model per row.

    python -m benchmarks.bench_gpu [--presets qwen2.5-7b-instruct ...] [--json out.json]

Per model and precision: load time, whether the logits are finite, and peak
`torch.cuda.max_memory_allocated`. Per editor: edit time, time per answered probe, and its
answers. Greedy answers are compared with the first precision's. On a machine without CUDA it
says so and exits 0. A precision the GPU lacks (bf16 before Ampere) is skipped with the reason.

What it does not do: score (use `python -m kedit_teach eval --quant 4bit` for that).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

SMALL = "gemma-3-270m"
SMALL_RUNS = (("fp16", None, torch.float16), ("bf16", None, torch.bfloat16), ("nf4", "4bit", None))
# Only the 270M model has a shipped LTE adapter and RECIPE modules; on a 7B, LTE runs unaligned
# (retrieval + in-context) and RECIPE is skipped: untrained modules would only show noise.
UNTRAINED = {"lte": {"adapter": None}}


def cached(preset: str) -> bool:
    """Whether a preset's weights are already in the Hugging Face cache (nothing is downloaded)."""
    from huggingface_hub import try_to_load_from_cache

    from kedit_teach.models import PRESETS
    hit = try_to_load_from_cache(PRESETS[preset].hf_id, "config.json")
    return isinstance(hit, str)


def plan(presets: list[str], bf16: bool, is_cached=cached) -> list[dict]:
    """The rows to run: {"model", "precision", "quantization", "dtype", "settings", "skip"}; a row
    with a "skip" reason is reported, not run."""
    rows = [{"model": SMALL, "precision": p, "quantization": q, "dtype": d, "settings": {}, "skip": None}
            for p, q, d in SMALL_RUNS]
    for row in rows:
        if row["dtype"] is torch.bfloat16 and not bf16:
            row["skip"] = "this GPU has no bf16 (compute capability < 8.0)"
    for preset in presets:
        rows.append({"model": preset, "precision": "nf4", "quantization": "4bit", "dtype": None,
                     "settings": UNTRAINED, "skip": None if is_cached(preset) else
                     f"not in the Hugging Face cache; load it once (load_model('{preset}', quantization='4bit'))"})
    return rows


def run(row: dict) -> dict:
    from kedit_teach.editors import FAST_SETTINGS, METHODS
    from kedit_teach.models import load_model
    from kedit_teach.tour import EIFFEL, take_turns

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model, tok = load_model(row["model"], quantization=row["quantization"], dtype=row["dtype"], check=False)
    load_s = time.perf_counter() - start
    ids = tok("The Eiffel Tower is located in the city of", return_tensors="pt").to(model.device)
    with torch.no_grad():
        finite = bool(torch.isfinite(model(**ids).logits).all())
    # ROME, MEMIT and AlphaEdit write into weights, which NF4 packs: they refuse 4-bit models by design
    methods = [m for m in METHODS if m != "noedit" and not (row["settings"] and m == "recipe")
               and METHODS[m].unsupported(model) is None]
    turns, model = take_turns(model, tok, EIFFEL, methods, {**FAST_SETTINGS, **row["settings"]})
    result = {"model": row["model"], "precision": row["precision"], "load_s": load_s, "finite": finite,
              "peak_gb": torch.cuda.max_memory_allocated() / 2 ** 30, "methods": turns}
    del model
    return result


def report(results: list[dict]) -> str:
    lines = []
    reference: dict[tuple[str, str], list[str]] = {}
    for r in results:
        if "skip" in r:
            lines.append(f"{r['model']} {r['precision']}: skipped, {r['skip']}")
            continue
        lines.append(f"{r['model']} {r['precision']}: loaded in {r['load_s']:.1f} s, logits "
                     f"{'finite' if r['finite'] else 'NOT FINITE'}, peak {r['peak_gb']:.2f} GB")
        for m in r["methods"]:
            answers = [a["after"] for a in m["answers"]]
            first = reference.setdefault((r["model"], m["method"]), answers)
            same = "same answers as the first precision" if answers == first else "answers differ: " + " | ".join(answers)
            lines.append(f"  {m['method']:7s} edit {1000 * m['edit_s']:8.1f} ms  "
                         f"answer {1000 * m['answer_s']:6.1f} ms/probe  {same}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="*", default=["qwen2.5-7b-instruct", "mistral-7b-instruct", "llama-2-7b-chat"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("No CUDA device here: the GPU check needs one (a Colab GPU runtime). Nothing to do.")
        return 0
    from tqdm.auto import tqdm
    print(f"GPU: {torch.cuda.get_device_name()}")
    results = [{"model": row["model"], "precision": row["precision"], "skip": row["skip"]} if row["skip"] else run(row)
               for row in tqdm(plan(args.presets, torch.cuda.is_bf16_supported()), desc="models x precisions")]
    print(report(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
