"""Foundation benchmark: load times, memory per dtype, forward time with full vs sliced logits.

    python -m benchmarks.bench_foundation [--json artifacts/bench_foundation.json]

Everything is measured in one run on this machine, so compare the ratios, not the seconds.
The first-load time uses a fresh, temporary cache (it converts the GGUF again).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch


def median_time(fn, repeats: int = 5) -> float:
    fn()  # warm-up: first calls allocate and pick kernels
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=None)
    parser.add_argument("--skip-first-load", action="store_true")
    args = parser.parse_args()

    from kedit_teach.data import load_teach
    from kedit_teach.metrics import generate_greedy
    from kedit_teach.models import describe, hidden_states, load_model, logits_at

    result: dict = {"threads": torch.get_num_threads()}
    if not args.skip_first_load:
        saved = os.environ.get("KEDIT_CACHE")
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["KEDIT_CACHE"] = tmp
            t = time.perf_counter()
            load_model()
            result["first_load_s"] = time.perf_counter() - t
        if saved is None:
            del os.environ["KEDIT_CACHE"]
        else:
            os.environ["KEDIT_CACHE"] = saved
    load_model()  # make sure the real cache exists before timing a cached load
    t = time.perf_counter()
    model, tok = load_model()
    result["cached_load_s"] = time.perf_counter() - t

    variants = {"fp32": dict(), "bf16": dict(dtype=torch.bfloat16), "nf4": dict(quantization="4bit")}
    ids = torch.randint(1000, 20000, (8, 24))
    mask = torch.ones_like(ids)
    prompts = [c.prompt for c in load_teach()[:64]]
    reference = generate_greedy(model, tok, prompts, 4)
    for name, kw in variants.items():
        m, _ = (model, tok) if name == "fp32" else load_model(**kw)
        with torch.no_grad():
            full = median_time(lambda: m(input_ids=ids, attention_mask=mask).logits)
            last = median_time(lambda: logits_at(m, hidden_states(m, ids, mask)[:, -1]))
        answers = reference if name == "fp32" else generate_greedy(m, tok, prompts, 4)
        same = sum(a.split()[:1] == b.split()[:1] for a, b in zip(reference, answers)) / len(prompts)
        result[name] = {"memory_mb": describe(m)["memory_mb"], "forward_full_s": full,
                        "forward_last_s": last, "same_first_word_as_fp32": same}
        print(name, result[name], flush=True)

    base = result["fp32"]["forward_full_s"]
    print(f"\nGemma-3-270M on {result['threads']} threads, batch 8x24 tokens")
    if "first_load_s" in result:
        print(f"load: first (convert GGUF) {result['first_load_s']:.1f} s, cached {result['cached_load_s']:.1f} s "
              f"({result['first_load_s'] / result['cached_load_s']:.0f}x faster)")
    print(f"{'variant':8s}{'memory MB':>11s}{'full logits':>13s}{'last only':>11s}{'speed-up vs fp32 full':>24s}"
          f"{'same answers':>14s}")
    for name in variants:
        r = result[name]
        print(f"{name:8s}{r['memory_mb']:>11.0f}{r['forward_full_s']:>12.3f}s{r['forward_last_s']:>10.3f}s"
              f"{base / r['forward_full_s']:>11.2f}x /{base / r['forward_last_s']:>6.2f}x"
              f"{r['same_first_word_as_fp32']:>14.0%}")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
