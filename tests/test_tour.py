"""The tour's report: the model as a sentence, and one-time work (layer statistics, projectors,
trained parts) timed apart from the edit, which `Editor.prepare` makes possible."""
from __future__ import annotations

import pytest

from kedit_teach import layer_stats
from kedit_teach.editors import AlphaEdit
from kedit_teach.models import describe
from kedit_teach.tour import EIFFEL, format_model, format_tour, take_turns, took

from .test_progress import TEXTS


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KEDIT_CACHE", str(tmp_path))  # nothing computed by another test


def test_the_model_is_described_in_a_sentence(gemma_tiny):
    line = format_model(describe(gemma_tiny[0]))
    assert line.startswith("Loaded ") and "(Gemma3ForCausalLM)" in line and "{" not in line
    assert " parameters in 4 layers, float32 on cpu, " in line and line.endswith(" MB")


def test_prepare_does_the_one_time_work_so_the_edit_does_none(gemma_tiny, own_cache, monkeypatch):
    model, tok = gemma_tiny
    editor = AlphaEdit(model, tok, corpus=TEXTS, steps=2)
    editor.prepare()

    def one_time_work(*args, **kwargs):
        raise AssertionError("the edit did one-time work that prepare() should have done")
    monkeypatch.setattr(layer_stats, "corpus_texts", one_time_work)  # statistics
    monkeypatch.setattr(layer_stats.torch.linalg, "eigh", one_time_work)  # projectors
    monkeypatch.setattr(editor, "_sample_templates", one_time_work)
    (info,) = editor.edit(EIFFEL)
    assert info["edit_s"] > 0
    editor.detach()


def test_the_tour_shows_setup_apart_from_the_edit(gemma_tiny, own_cache):
    model, tok = gemma_tiny
    rows, _ = take_turns(model, tok, EIFFEL, methods=["ice", "rome"], progress=False,
                         settings={"rome": {"corpus": TEXTS, "steps": 2}})
    assert all(r["setup_s"] > 0 and r["edit_s"] > 0 for r in rows)
    lines = format_tour(EIFFEL, rows).splitlines()
    header = next(line for line in lines if line.startswith("method "))
    assert header.split()[:3] == ["method", "setup", "edit"]
    assert any(line.startswith("'setup' = one-time work before the first edit") for line in lines)
    rome = rows[1]
    assert any(line.startswith(f"rome   {took(rome['setup_s']):>9s} {took(rome['edit_s']):>9s}  ") for line in lines)
