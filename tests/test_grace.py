"""GRACE: Algorithm 1, lookup at the key position, fast == naive value training, persistence."""
from __future__ import annotations

import pytest
import torch

from kedit_teach.data import EditCase
from kedit_teach.editors import GRACE, EditorStateError
from kedit_teach.editors.grace import GraceLayer
from kedit_teach.models import load_model

from .test_editors import CASE, OTHER, PROBES


def logits(editor):
    """Logits on PROBES with the codebook looking up at each prompt's last token, as score() does."""
    enc = editor.tokenizer(editor.model_inputs(PROBES), return_tensors="pt", padding=True, padding_side="right")
    with torch.no_grad(), editor._batch_context(enc["attention_mask"].sum(1) - 1):
        return editor.model(**enc).logits


def grace(model, tok, **kw):
    return GRACE(model, tok, **{"n_iter": 40, "lr": 1.0, "eps_init": 1.0, **kw})


def case(cid: str, prompt: str, target: str) -> EditCase:
    return EditCase(case_id=cid, subject="", prompt=prompt, target_new=target)


def test_an_edit_is_generated_with_the_kv_cache_and_reset_is_exact(tiny):
    model, tok = tiny
    editor = grace(model, tok)
    before = logits(editor)
    (info,) = editor.edit(CASE)
    assert info["op"] == "add" and info["loss_end"] < info["loss_start"]
    (score,) = editor.score([CASE.prompt], [CASE.target_new])
    assert score.exact == 1.0
    # greedy generate() says it too: the prefill hit flows to later tokens through attention
    assert editor.generate(CASE.prompt, max_new_tokens=2).strip().startswith("Rome")
    editor.reset()
    assert torch.equal(logits(editor), before)


def test_key_is_read_at_the_last_prompt_token_even_under_teacher_forcing(gemma_tiny):
    model, tok = gemma_tiny
    editor = grace(model, tok)
    editor.edit(CASE)
    hits = editor.adapter.hits[0]
    # prompt + a long target fed together: the lookup must still use the prompt's last token
    (score,) = editor.score([CASE.prompt], ["Rome Rome Rome Rome"])
    assert editor.adapter.hits[0] == hits + 1
    key_pos = editor.tokenizer(CASE.prompt, return_tensors="pt")["input_ids"].shape[1] - 1
    editor.adapter.mode, editor.adapter.positions = "capture", torch.tensor([key_pos])
    ids = editor.tokenizer([CASE.prompt + " Rome Rome"], return_tensors="pt")
    with torch.no_grad():
        model(**ids)
    editor.adapter.mode = "lookup"
    torch.testing.assert_close(editor.adapter.captured[0][0], editor.adapter.keys[0])


def test_unrelated_prompts_pass_through_untouched(gemma_tiny):
    model, tok = gemma_tiny
    editor = grace(model, tok, eps_init=1e-3)
    before = logits(editor)
    editor.edit(CASE)
    after = logits(editor)
    assert torch.equal(after[:2], before[:2])  # two unrelated probes: bit-identical
    assert not torch.equal(after[2], before[2])  # the edit prompt changed


def rephrase_within_reach(model, tok, **kw) -> tuple[GRACE, float]:
    """A GRACE editor whose eps_init equals the distance d between CASE's prompt and rephrase keys,
    so the rephrase lands within eps_i + eps_init of CASE's entry, with CASE already edited."""
    editor = grace(model, tok, eps_init=1e-3, **kw)
    d = float((editor.key(CASE.prompt) - editor.key(CASE.rephrase_prompts[0])).norm())
    editor.eps_init = d
    editor.edit(CASE)
    return editor, d


def test_algorithm_1_add_then_expand(gemma_tiny):
    editor, d = rephrase_within_reach(*gemma_tiny)
    assert editor.log[0]["op"] == "add" and float(editor.adapter.eps[0]) == pytest.approx(d)
    (same,) = editor.edit(case("r1", CASE.rephrase_prompts[0], "Rome"))
    assert same["op"] == "expand" and len(editor.adapter.keys) == 1
    assert float(editor.adapter.eps[0]) == pytest.approx(2 * d)  # deck: eps_i + eps_init
    table = editor.codebook()
    assert list(table["label"]) == ["rome"] and table.loc[0, "cases"] == "c1, r1"


def test_split_halves_both_radii(gemma_tiny):
    editor, d = rephrase_within_reach(*gemma_tiny)
    (info,) = editor.edit(case("x", CASE.rephrase_prompts[0], "Tokyo"))
    assert info["op"] == "split" and info["d_min"] == pytest.approx(d, rel=1e-5)
    assert editor.adapter.eps.tolist() == pytest.approx([d / 2, d / 2], rel=1e-5)
    assert editor.inspect(CASE.prompt)["fired"] == 0
    assert editor.inspect(CASE.rephrase_prompts[0])["fired"] == 1


def test_coverage_expansion_sets_eps_to_the_distance(gemma_tiny):
    editor, d = rephrase_within_reach(*gemma_tiny, expand="coverage")
    editor.edit(case("r1", CASE.rephrase_prompts[0], "Rome"))
    assert float(editor.adapter.eps[0]) == pytest.approx(d, rel=1e-5)


def test_fast_and_naive_value_training_agree(tiny):
    model, tok = tiny
    editor = grace(model, tok, n_iter=10, stop_loss=None)
    fast, fast_losses = editor.train_value(CASE, fast=True)
    naive, naive_losses = editor.train_value(CASE, fast=False)
    assert len(fast_losses) == len(naive_losses) == 10
    assert fast_losses == pytest.approx(naive_losses, rel=1e-3, abs=1e-4)
    torch.testing.assert_close(fast, naive, rtol=1e-3, atol=1e-3)


def test_training_stops_once_the_target_is_near_certain(gemma_tiny):
    full = grace(*gemma_tiny, n_iter=40, stop_loss=None)
    _, losses = full.train_value(CASE)
    stop = sorted(losses)[len(losses) // 2]  # reached about halfway through the full run
    full.stop_loss = stop
    _, early = full.train_value(CASE)
    assert len(early) < len(losses)
    assert early[-1] < stop and all(x >= stop for x in early[:-1])


def test_inspect_reports_distances_eps_labels_and_hits(gemma_tiny):
    editor = grace(*gemma_tiny)
    editor.edit([CASE, OTHER])
    editor.generate(CASE.prompt, max_new_tokens=1)
    info = editor.inspect(CASE.prompt)
    assert len(info["distances"]) == len(info["eps"]) == 2
    assert info["fired"] == 0 and info["distances"][0] == pytest.approx(0.0, abs=1e-4)
    assert info["labels"] == ["rome", "english"] and info["hits"][0] >= 1
    far = editor.inspect("Berlin is in")
    assert far["fired"] is None and min(far["distances"]) > 0


def test_remove_rebuilds_the_codebook_without_the_edit(gemma_tiny):
    model, tok = gemma_tiny
    editor = grace(model, tok)
    editor.edit(OTHER)
    only_other = logits(editor)
    editor.edit(CASE)
    editor.remove(CASE.case_id)
    assert torch.equal(logits(editor), only_other)
    assert list(editor.codebook()["cases"]) == ["c2"]


def test_save_load_round_trips_the_codebook(tmp_path, gemma_tiny, tiny_dirs):
    editor = grace(*gemma_tiny)
    editor.edit([CASE, OTHER])
    editor.generate(CASE.prompt, max_new_tokens=1)
    after, table = logits(editor), editor.codebook()
    editor.save(tmp_path)
    fresh = grace(*load_model(str(tiny_dirs["gemma3"])))
    fresh.load(tmp_path)
    assert fresh.codebook().equals(table)  # before logits(): a lookup counts a hit
    assert torch.equal(logits(fresh), after)
    torch.testing.assert_close(fresh.adapter.keys, editor.adapter.keys, rtol=0, atol=0)
    (tmp_path / "editor.safetensors").unlink()
    editor.save(tmp_path)  # overwrite, then corrupt the key of one case
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(tmp_path / "editor.safetensors"))
    del tensors["key/c1"]
    save_file(tensors, str(tmp_path / "editor.safetensors"))
    with pytest.raises(EditorStateError, match="lack keys"):
        grace(*load_model(str(tiny_dirs["gemma3"]))).load(tmp_path)


def test_works_on_4bit_and_sizes_from_features(tiny_dirs):
    # llama: bitsandbytes' CPU kernel adds Qwen2's q/k/v bias in place, which autograd refuses
    model, tok = load_model(str(tiny_dirs["llama"]), quantization="4bit")
    editor = grace(model, tok)
    base = editor.adapter.base
    assert type(base).__name__ == "Linear4bit"
    assert base.weight.numel() != base.in_features * base.out_features  # packed: shape lies
    assert (editor.adapter.d_in, editor.adapter.d_out) == (base.in_features, base.out_features)
    editor.edit(CASE)
    assert editor.adapter.values.shape == (1, base.out_features)
    (score,) = editor.score([CASE.prompt], [CASE.target_new])
    assert score.exact == 1.0


def test_bad_options_and_double_wrapping(gemma_tiny):
    model, tok = gemma_tiny
    with pytest.raises(ValueError, match="replacement='first'"):
        GRACE(model, tok, replacement="first")
    grace(model, tok)
    with pytest.raises(ValueError, match="already carries a GRACE codebook"):
        grace(model, tok)
    assert isinstance(model.get_decoder().layers[2].mlp.down_proj, GraceLayer)


def test_key_is_the_stored_lookup_key(gemma_tiny):
    editor = grace(*gemma_tiny)
    editor.edit(CASE)
    torch.testing.assert_close(editor.key(CASE.prompt), editor.adapter.keys[0], rtol=0, atol=0)
    assert not torch.equal(editor.key(OTHER.prompt), editor.adapter.keys[0])
