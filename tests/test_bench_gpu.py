"""The GPU check's plan and its CPU behaviour (its CUDA branch needs a GPU: see benchmarks/bench_gpu.py)."""
from __future__ import annotations

import torch

from benchmarks import bench_gpu


def test_the_plan_covers_three_precisions_and_cached_7b_presets_only():
    rows = bench_gpu.plan(["qwen2.5-7b-instruct", "llama-2-7b-chat"], bf16=False,
                          is_cached=lambda preset: preset == "qwen2.5-7b-instruct")
    assert [(r["model"], r["precision"]) for r in rows] == [
        ("gemma-3-270m", "fp16"), ("gemma-3-270m", "bf16"), ("gemma-3-270m", "nf4"),
        ("qwen2.5-7b-instruct", "nf4"), ("llama-2-7b-chat", "nf4")]
    skipped = {(r["model"], r["precision"]): r["skip"] for r in rows if r["skip"]}
    assert set(skipped) == {("gemma-3-270m", "bf16"), ("llama-2-7b-chat", "nf4")}
    assert "bf16" in skipped[("gemma-3-270m", "bf16")] and "cache" in skipped[("llama-2-7b-chat", "nf4")]
    assert rows[0]["dtype"] is torch.float16 and rows[2]["quantization"] == "4bit"
    assert rows[3]["settings"] == {"lte": {"adapter": None}}  # no adapter ships for a 7B


def test_without_cuda_it_says_so_and_exits_0(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_gpu.main([]) == 0
    assert "No CUDA device" in capsys.readouterr().out


def test_the_report_compares_answers_across_precisions():
    turn = lambda after: {"method": "ice", "edit_s": 0.001, "answer_s": 0.01,  # noqa: E731
                          "answers": [{"after": after}]}
    results = [{"model": "m", "precision": "fp16", "load_s": 1.0, "finite": True, "peak_gb": 0.5, "methods": [turn("Rome")]},
               {"model": "m", "precision": "nf4", "load_s": 1.0, "finite": False, "peak_gb": 0.3, "methods": [turn("Paris")]},
               {"model": "m", "precision": "bf16", "skip": "no bf16"}]
    text = bench_gpu.report(results)
    assert "same answers as the first precision" in text and "answers differ: Paris" in text
    assert "NOT FINITE" in text and "bf16: skipped, no bf16" in text
