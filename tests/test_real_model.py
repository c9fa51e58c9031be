"""The marked set on the real Gemma-3-270M (run with everything else; select alone with -m real)."""
from __future__ import annotations

import pytest
import torch

from kedit_teach.data import load_counterfact, load_teach
from kedit_teach.editors import ICE, NoEdit
from kedit_teach.evaluate import evaluate
from kedit_teach.metrics import generate_greedy, teacher_forced
from kedit_teach.models import describe, encode_pair, load_encoder, load_model

from .conftest import shared

pytestmark = pytest.mark.real


def test_eiffel_tower_is_in_paris(real):
    model, tok = real
    assert "Paris" in NoEdit(model, tok).generate("The Eiffel Tower is located in the city of", 6)


def test_4bit_on_cpu_loads_smaller_and_generates():
    model, tok = load_model("gemma-3-270m", quantization="4bit")
    info = describe(model)
    assert info["quantization"] == "4bit" and info["memory_mb"] < 800
    assert "Paris" in NoEdit(model, tok).generate("The Eiffel Tower is located in the city of", 6)


def test_target_scored_as_continuation_not_bare_word(real):
    model, tok = real
    prompt = "The Eiffel Tower is located in the city of"
    _, target = encode_pair(tok, prompt, "Paris")
    bare = tok("Paris", add_special_tokens=False)["input_ids"]
    assert target != bare and tok.convert_ids_to_tokens(target) == ["▁Paris"]
    (score,) = teacher_forced(model, tok, [prompt], ["Paris"])
    assert score.exact == 1.0
    # scoring the bare word, as EasyEdit's GRACE metric does, calls a known fact wrong
    (bare_score,) = teacher_forced(model, tok, [prompt + " "], ["Paris"])
    assert tok.decode(bare_score.target_ids) == "Paris" and bare_score.exact == 0.0


def test_bf16_gives_the_same_greedy_answers_as_fp32(real):
    model, tok = real
    prompts = [c.prompt for c in load_teach()[:48]]
    fp32 = generate_greedy(model, tok, prompts, 4)
    bf16_model, _ = load_model("gemma-3-270m", dtype=torch.bfloat16)
    bf16 = generate_greedy(bf16_model, tok, prompts, 4)
    first_word = [a.split()[:1] == b.split()[:1] for a, b in zip(fp32, bf16)]
    assert sum(first_word) / len(first_word) >= 0.95


def test_bundled_set_is_known_to_the_model(real):
    model, tok = real
    cases = load_teach()
    assert len(cases) >= 150
    sample = cases[::10]
    scores = teacher_forced(model, tok, [c.prompt for c in sample], [c.ground_truth for c in sample])
    assert sum(s.exact for s in scores) / len(scores) >= 0.9


def test_noedit_and_ice_on_counterfact(real):
    cases = load_counterfact(shared("counterfact", "counterfact-edit.json"), n=8)
    noedit = evaluate(NoEdit(*real), cases, mode="sequential", fluency_n=2, progress=False)
    assert all(noedit["metrics"][p]["locality"] == 1.0 for p in noedit["metrics"])
    ice = evaluate(ICE(*real), cases, mode="sequential", fluency_n=0, progress=False)
    assert ice["metrics"]["teacher_forced"]["reliability"] >= 0.75
    assert ice["metrics"]["teacher_forced"]["reliability"] > noedit["metrics"]["teacher_forced"]["reliability"]


def test_offline_encoder_embeds():
    encoder = load_encoder()
    vectors = encoder.encode(["The Eiffel Tower is in Rome", "The Eiffel Tower is located in Rome", "Bananas"])
    assert vectors.shape == (3, 384)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2]


def test_shipped_lte_adapter_edits_and_reset_is_bit_exact(encoder):
    from kedit_teach.editors import LTE
    from kedit_teach.memory import VectorMemory
    from kedit_teach.metrics import generation_match, pack_targets, target_logits
    model, tok = load_model()  # its own copy: LTE wraps the model with LoRA layers
    editor = LTE(model, tok, VectorMemory(encoder))
    record = editor.record
    assert editor.aligned and record["model"] == "gemma-3-270m" and record["steps"] >= 100
    assert record["mix"]["distractor_share"]["0"] == pytest.approx(0.5, abs=0.05)
    cases = load_teach()[:8]
    prompts, truths = [c.prompt for c in cases], [c.ground_truth for c in cases]
    batch = pack_targets(tok, editor.model_inputs(prompts), truths)
    before = target_logits(editor.model, batch)
    editor.edit(cases)
    said = editor.generate([c.rephrase_prompts[0] for c in cases] + prompts, 8)
    assert sum(generation_match(s, c.target_new) for s, c in zip(said[8:], cases)) >= 7  # reliability
    assert sum(generation_match(s, c.target_new) for s, c in zip(said[:8], cases)) >= 4  # generality
    editor.reset()
    with editor._batch_context(None):
        assert torch.equal(target_logits(editor.model, batch), before)


def test_image_tokens_are_special_and_never_generated(real):
    """After ROME's Eiffel edit the model went on "Rome, Italy<start_of_image><start_of_image>...":
    the GGUF-converted tokenizer did not flag the image tokens special, and nothing forbade them."""
    from kedit_teach.editors import ROME
    from kedit_teach.models import encode_prompts
    from kedit_teach.tour import EIFFEL
    model, tok = real
    image = tok.convert_tokens_to_ids("<start_of_image>")
    assert image not in (None, tok.unk_token_id)
    assert tok.added_tokens_decoder[image].special
    rome = tok("Rome, Italy", add_special_tokens=False)["input_ids"]
    assert tok.decode(rome + [image], skip_special_tokens=True) == "Rome, Italy"
    assert {image, tok.convert_tokens_to_ids("<end_of_image>")} <= set(model.generation_config.suppress_tokens)
    editor = ROME(model, tok)
    try:
        editor.edit(EIFFEL)
        enc = encode_prompts(tok, [EIFFEL.prompt], model.device)
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        assert image not in out[0, enc["input_ids"].shape[1]:].tolist()
        assert editor.generate(EIFFEL.prompt, 12).strip().startswith("Rome")
    finally:
        editor.detach()
