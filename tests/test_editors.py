"""The Editor interface and the baselines, on tiny random models."""
from __future__ import annotations

import json

import pytest
import torch

from kedit_teach.data import EditCase
from kedit_teach.editors import FTL, ICE, EditorStateError, NoEdit
from kedit_teach.models import update_prompt

CASE = EditCase(case_id="c1", subject="Eiffel Tower", prompt="The Eiffel Tower is located in the city of",
                target_new="Rome", ground_truth="Paris",
                rephrase_prompts=["The Eiffel Tower is in"],
                locality=[("The capital of Japan is", "Tokyo")],
                portability=[("The Eiffel Tower is in the country of", "Italy")])
OTHER = EditCase(case_id="c2", subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux is",
                 target_new="English", locality=[("Toyota was founded in", "Japan")])
PROBES = ["The capital of Japan is", "Berlin is in", CASE.prompt]


def logits(editor):
    enc = editor.tokenizer([editor.model_inputs([p])[0] for p in PROBES], return_tensors="pt", padding=True,
                           padding_side="right")
    with torch.no_grad():
        return editor.model(**enc).logits


def ftl(model, tok, **kw):
    return FTL(model, tok, **{"steps": 40, "lr": 0.1, "norm_constraint": 1.0, **kw})


EDITORS = {"noedit": NoEdit, "ice": ICE, "ft-l": ftl}


@pytest.mark.parametrize("method", EDITORS)
def test_reset_restores_outputs_bit_for_bit(tiny, method):
    editor = EDITORS[method](*tiny)
    before = logits(editor)
    editor.edit([CASE, OTHER])
    editor.reset()
    assert torch.equal(logits(editor), before)
    assert editor.cases == {}


def test_ftl_learns_the_edit_and_changes_only_its_layer(tiny):
    model, tok = tiny
    editor = ftl(model, tok)
    untouched = {n: p.clone() for n, p in model.named_parameters() if "down_proj" not in n}
    (info,) = editor.edit(CASE)
    (score_after,) = editor.score([CASE.prompt], ["Rome"])
    assert info["loss_end"] < info["loss_start"] - 0.5  # tiny tied embeddings cap how low it can go
    assert score_after.exact == 1.0
    assert editor.generate(CASE.prompt, max_new_tokens=2).strip().startswith("Rome")
    assert all(torch.equal(p, untouched[n]) for n, p in model.named_parameters() if n in untouched)
    assert editor.inspect(CASE.prompt)["max_abs_change"] > 0


def test_ftl_norm_constraint_bounds_the_change(gemma_tiny):
    editor = ftl(*gemma_tiny, norm_constraint=1e-3)
    editor.edit(CASE)
    assert editor.inspect(CASE.prompt)["max_abs_change"] <= 1e-3 + 1e-7


def test_ftl_lora_on_4bit(tiny_dirs):
    from kedit_teach.models import load_model
    model, tok = load_model(str(tiny_dirs["llama"]), quantization="4bit")
    editor = FTL(model, tok, steps=15, lr=5e-2)
    assert editor.lora and editor.config()["lora"]
    before = logits(editor)
    (info,) = editor.edit(CASE)
    assert info["loss_end"] < info["loss_start"]
    assert not torch.equal(logits(editor), before)
    editor.reset()
    assert torch.equal(logits(editor), before)


def test_ice_puts_the_gold_fact_in_front_of_every_prompt_of_its_case(gemma_tiny):
    editor = ICE(*gemma_tiny)
    assert editor.model_inputs([CASE.prompt]) == [CASE.prompt]  # nothing edited yet
    editor.edit([CASE, OTHER])
    inputs = editor.model_inputs([CASE.rephrase_prompts[0], OTHER.locality[0][0], "Unseen prompt"])
    assert inputs[0] == update_prompt([CASE.descriptor], CASE.rephrase_prompts[0])
    assert inputs[1] == update_prompt([OTHER.descriptor], OTHER.locality[0][0])
    assert inputs[2].startswith("[Updated Information] " + OTHER.descriptor)  # latest edit
    editor.remove("c2")
    assert editor.inspect(OTHER.locality[0][0])["fact_case_id"] == "c1"


def test_edit_errors_name_the_fix(gemma_tiny):
    editor = NoEdit(*gemma_tiny)
    editor.edit(CASE)
    with pytest.raises(ValueError, match="already edited; remove"):
        editor.edit(CASE)
    with pytest.raises(KeyError, match="no edit with case_id 'nope'.*edited: c1"):
        editor.remove("nope")
    with pytest.raises(TypeError, match="EditCase"):
        editor.edit({"prompt": "x"})


@pytest.mark.parametrize("method", EDITORS)
def test_save_load_round_trips_exactly(tmp_path, gemma_tiny, tiny_dirs, method):
    from kedit_teach.models import load_model
    editor = EDITORS[method](*gemma_tiny)
    editor.edit([CASE, OTHER])
    after = logits(editor)
    editor.save(tmp_path)
    fresh = EDITORS[method](*load_model(str(tiny_dirs["gemma3"])))
    fresh.load(tmp_path)
    assert list(fresh.cases) == ["c1", "c2"] and fresh.cases["c1"] == CASE
    assert torch.equal(logits(fresh), after)


def test_load_rejects_corrupt_and_mismatched_state(tmp_path, gemma_tiny):
    editor = ICE(*gemma_tiny)
    editor.edit(CASE)
    editor.save(tmp_path)
    with pytest.raises(EditorStateError, match="'method' is 'ice'.*'noedit' editor"):
        NoEdit(*gemma_tiny).load(tmp_path)
    meta = json.loads((tmp_path / "editor.json").read_text())
    meta["cases"][0]["target_new"] = ""
    (tmp_path / "editor.json").write_text(json.dumps(meta))
    with pytest.raises(EditorStateError, match="field 'cases'.*target_new"):
        editor.load(tmp_path)
    (tmp_path / "editor.json").write_text("{not json")
    with pytest.raises(EditorStateError, match="not valid JSON"):
        editor.load(tmp_path)
    (tmp_path / "editor.safetensors").write_bytes(b"garbage")
    with pytest.raises(EditorStateError, match="corrupt"):
        editor.load(tmp_path)
    with pytest.raises(EditorStateError, match="missing"):
        editor.load(tmp_path / "nowhere")


def test_ftl_config_mismatch_is_refused(tmp_path, gemma_tiny):
    editor = ftl(*gemma_tiny)
    editor.edit(CASE)
    editor.save(tmp_path)
    with pytest.raises(EditorStateError, match="field 'config'"):
        ftl(*gemma_tiny, layer=0).load(tmp_path)


def test_ftl_remove_replays_the_remaining_edits(gemma_tiny):
    model, tok = gemma_tiny
    editor = ftl(model, tok)
    editor.edit(OTHER)
    only_other = logits(editor)
    editor.reset()
    editor.edit([OTHER])
    editor.edit([CASE])
    editor.remove("c1")
    assert torch.allclose(logits(editor), only_other, atol=1e-5)
