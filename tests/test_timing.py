"""Table 3 timing (timing.py): stores filled through Editor.fill, GRACE's synthetic entries that
never fire and vanish on remove/reset, disjoint probe rounds, the model left as loaded."""
from __future__ import annotations

import json

import pytest
import torch

from kedit_teach import timing
from kedit_teach.data import load_teach
from kedit_teach.editors import GRACE

from .conftest import cli_error
from .test_turns import snapshot


def test_probe_rounds_are_disjoint_and_sized():
    cases = load_teach(12)
    rounds = timing.probes(cases, rounds=3, per_round=7)
    assert [len(p) for p, _ in rounds] == [7, 7, 7] and all(len(t) == 7 for _, t in rounds)
    seen = [set(p) for p, _ in rounds]
    assert not (seen[0] & seen[1] or seen[1] & seen[2] or seen[0] & seen[2])
    with pytest.raises(ValueError, match="need 9 cases"):
        timing.probes(cases[:8], rounds=3, per_round=7)


def test_grace_fill_adds_entries_that_never_fire_and_vanish_on_remove_and_save(gemma_tiny, tmp_path):
    model, tok = gemma_tiny
    cases = load_teach(6)
    prompts = [c.prompt for c in cases]
    editor = GRACE(model, tok, n_iter=2)
    editor.edit(cases[0])
    before, hits = editor.generate(prompts, 6), sum(editor.adapter.hits)
    assert editor.fill(load_teach(40)[10:]) == "synthetic entries"
    assert len(editor.adapter.keys) == 31 and len(editor.codebook()) == 31 and list(editor.cases) == [cases[0].case_id]
    assert editor.generate(prompts, 6) == before and editor.adapter.hits[1:] == [0] * 30
    assert editor.adapter.hits[0] == 2 * hits  # the real entry fires as before
    editor.edit(cases[1])  # Alg. 1 runs against all 31 entries and adds a 32nd
    assert len(editor.adapter.keys) == 32
    editor.remove(cases[1].case_id)
    assert len(editor.adapter.keys) == 1  # the replay rebuilds the codebook from the edits alone
    editor.fill(cases[2:])
    editor.adapter.hits[0] = 7
    path = editor.save(tmp_path / "grace")
    editor.detach()
    restored = GRACE(model, tok, n_iter=2).load(path)
    assert len(restored.adapter.keys) == 1 and restored.adapter.hits == [7]
    restored.reset()
    editor = restored
    assert len(editor.adapter.keys) == 0 and editor._labels == [] and editor._members == []


def test_table3_times_every_store_size_and_leaves_the_model_as_loaded(gemma_tiny):
    model, tok = gemma_tiny
    names, weights = snapshot(model)
    teach = load_teach(64)
    rows = timing.table3(model, tok, background=teach[:30], cases=teach[30:40], methods=("grace", "ice"),
                         stored=(0, 30), rounds=2, per_round=6, n_edits=2, settings={"grace": {"n_iter": 2}},
                         progress=False)
    assert [(r["method"], r["stored"], r["fill"]) for r in rows] == [
        ("grace", 0, "empty"), ("grace", 30, "synthetic entries"), ("ice", 0, "empty"), ("ice", 30, "real edits")]
    assert all(r["edit_s"] > 0 and r["infer_ms"] > 0 and r["ratio"] > 0 and r["peak_memory_mb"] > 0 for r in rows)
    after_names, after = snapshot(model)
    assert after_names == names and all(torch.equal(after[k], weights[k]) for k in weights)
    shown = timing.table(rows)
    assert list(shown.index) == ["grace", "ice"] and shown.loc["grace", "paper: edit s / inference s"] == "12.5343 / 0.0936"
    assert shown.loc["ice", "paper: edit s / inference s"] == "–" and "(" in shown.loc["ice", "ms per query, 30 stored"]


def test_table3_refuses_a_short_background_or_shared_case_ids(gemma_tiny):
    model, tok = gemma_tiny
    teach = load_teach(40)
    with pytest.raises(ValueError, match="need as many background cases"):
        timing.table3(model, tok, background=teach[:5], cases=teach[30:], stored=(0, 10), progress=False)
    with pytest.raises(ValueError, match="share case ids"):
        timing.table3(model, tok, background=teach[::-1], cases=teach[30:], methods=("ice",), stored=(0, 10),
                      rounds=1, per_round=3, n_edits=2, progress=False)


def test_a_folders_timing_comes_in_with_its_summary(tmp_path):
    from kedit_teach import grid
    (tmp_path / "summary.json").write_text(json.dumps({"machine": {}, "rows": []}))
    assert "timing" not in grid.load_summary(tmp_path)
    found = [{"method": "lte", "stored": 0, "edit_s": 0.01, "infer_ms": 100.0, "ratio": 1.0}]
    (tmp_path / "timing.json").write_text(json.dumps({"machine": {}, "rows": found}))
    assert grid.load_summary(tmp_path)["timing"] == found
    assert timing.table(found).loc["lte", "ms per query, 0 stored"] == "100 (1.00x)"


def test_bench_timing_cli_bad_input(capsys, tmp_path, monkeypatch):
    from kedit_teach import data
    line = cli_error(capsys, "bench", "--timing-only", "--methods", "rome", "--out", str(tmp_path))
    assert "--timing times grace, lte, recipe, serac, none of which is in --methods" in line
    monkeypatch.setattr(data, "SHARED_DIR", tmp_path / "nowhere")
    line = cli_error(capsys, "bench", "--timing-only", "--data", "teach", "--out", str(tmp_path))
    assert "counterfact-train.json is missing" in line and not (tmp_path / "timing.json").exists()
