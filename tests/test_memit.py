"""MEMIT and AlphaEdit: the solves, Gemma-3's norm after the MLP, the editor contract on tiny models,
then the real model."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from kedit_teach import layer_stats
from kedit_teach.data import EditCase
from kedit_teach.editors.memit import MEMIT, AlphaEdit, default_memit_layers, mlp_shift
from kedit_teach.layer_stats import second_moment
from kedit_teach.metrics import target_nll
from .test_rome import EIFFEL, LOOSE, TOYOTA

SMALL = {**LOOSE, "lam": 10.0}  # the tiny models' 256 keys, not the 15000 of the default


@pytest.fixture
def gemma_tiny(gemma_tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("KEDIT_CACHE", str(tmp_path / "cache"))
    return gemma_tiny


def _nll(editor, case):
    with torch.no_grad():
        return float(target_nll(editor.model, editor.tokenizer, [case.prompt], [case.target_new]))


def test_the_shift_is_found_through_gemmas_norm_after_the_mlp(gemma_tiny):
    """Gemma-3 adds RMSNorm(m) (1 + w) to the residual, not m: using the wanted residual change as
    the change of m (what MEMIT's derivation assumes) misses, solving through the norm hits."""
    model, _ = gemma_tiny
    norm = model.model.layers[1].post_feedforward_layernorm
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(norm.weight.shape, generator=g) * 3)
    m, other = torch.randn(3, 64, generator=g) * 0.1, torch.randn(3, 64, generator=g) * 0.1
    with torch.no_grad():
        want = norm(other)  # a change the norm can produce
        shift = (want - norm(m)).double()
        solved = norm((m + mlp_shift(norm, m, shift)).float())
        naive = norm(m + shift.float())
    assert float((solved - want).norm() / (want - norm(m)).norm()) < 1e-2
    assert float((naive - want).norm() / (want - norm(m)).norm()) > 0.5
    assert torch.equal(mlp_shift(None, m, shift), shift)  # Llama, Qwen: the MLP output is added as it is


def test_prepare_reads_each_cached_layer_once(gemma_tiny, monkeypatch):
    model, tok = gemma_tiny
    MEMIT(model, tok, layers=[0, 1], **SMALL).prepare()  # computes and caches C
    reads = []
    monkeypatch.setattr(layer_stats, "load_file", lambda f: reads.append(f) or load_file(f))
    memit = MEMIT(model, tok, layers=[0, 1], **SMALL)
    memit.prepare()
    assert len(reads) == 2 and set(memit._moments) == {0, 1}


def test_memit_solve_fits_the_keys_and_alphaedit_stays_in_the_null_space(gemma_tiny, tmp_path):
    model, tok = gemma_tiny
    g = torch.Generator().manual_seed(1)
    K, R = torch.randn(3, 128, generator=g, dtype=torch.float64), torch.randn(3, 64, generator=g, dtype=torch.float64)
    memit = MEMIT(model, tok, layers=[1], **{**SMALL, "lam": 1e-8})
    delta = memit.solve(1, K, R)
    assert delta.shape == (64, 128) and torch.allclose(K @ delta.T, R, atol=1e-5)  # lambda -> 0: exact fit
    C = second_moment(model, tok, 1, corpus=memit.corpus, n_keys=memit.n_keys).C  # the tiny model's keys are short
    middle = float(torch.linalg.eigvalsh(C).median())
    alpha = AlphaEdit(model, tok, layers=[1], **SMALL, threshold=middle)
    P, kept = alpha.projector(1)
    assert 0.4 < kept < 0.6 and torch.allclose(P @ P, P, atol=1e-5)
    again = AlphaEdit(model, tok, layers=[1], **SMALL, threshold=middle).projector(1)[0]  # from the cache
    assert torch.equal(again, P) and len(list((tmp_path / "cache").rglob("null-*"))) == 1
    delta = alpha.solve(1, K, R)
    # Delta (I - P) = 0: keys the model already uses (C's large directions) are left alone
    assert float((delta @ (torch.eye(128, dtype=torch.float64) - P)).norm()) < 1e-6 * float(delta.norm())


def test_a_batch_edit_changes_only_the_edited_layers_and_undoes_bit_exactly(gemma_tiny, tmp_path):
    model, tok = gemma_tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    editor = AlphaEdit(model, tok, layers=[1, 2], **SMALL)
    nll = [_nll(editor, c) for c in (EIFFEL, TOYOTA)]
    infos = editor.edit([EIFFEL, TOYOTA])
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"model.layers.{l}.mlp.down_proj.weight" for l in (1, 2)}
    assert all(after < first for after, first in zip([_nll(editor, c) for c in (EIFFEL, TOYOTA)], nll))
    assert len(editor.norms) == 1 and infos[0]["weight_norm"] == editor.norms[0]  # one group, one norm
    assert editor.inspect("x")["edit_keys"] == 2 * len(editor.templates())
    editor.reset()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_remove_replays_the_other_groups_and_save_load_keeps_the_edit_keys(gemma_tiny, tmp_path):
    model, tok = gemma_tiny
    editor = AlphaEdit(model, tok, layers=[1, 2], **SMALL)
    weights = lambda: {l: m.weight.detach().clone() for l, m in editor.linears.items()}  # noqa: E731
    editor.edit(TOYOTA)
    toyota_alone = weights()
    editor.reset()
    editor.edit(EIFFEL)
    eiffel_alone = weights()
    editor.edit(TOYOTA)  # on top of Eiffel, with Eiffel's keys in the solve: not the same update
    assert not all(torch.equal(w, toyota_alone[l]) for l, w in weights().items())
    editor.save(tmp_path / "state")
    saved = weights()
    editor.remove("t1")
    assert all(torch.equal(w, eiffel_alone[l]) for l, w in weights().items())
    assert editor.inspect("x")["edit_keys"] == len(editor.templates())
    editor.load(tmp_path / "state")
    assert all(torch.equal(w, saved[l]) for l, w in weights().items())
    assert list(editor.cases) == ["e1", "t1"] and len(editor.norms) == 2
    assert editor.inspect("x")["edit_keys"] == 2 * len(editor.templates())
    editor.remove("e1")  # the groups survive the round trip: Toyota is replayed alone
    assert all(torch.equal(w, toyota_alone[l]) for l, w in weights().items())


def test_memit_refuses_what_it_cant_edit(gemma_tiny):
    model, tok = gemma_tiny
    editor = MEMIT(model, tok, layers=[1, 2], **SMALL)
    w = {l: m.weight.detach().clone() for l, m in editor.linears.items()}
    with pytest.raises(ValueError, match="does not occur"):
        editor.edit([EIFFEL, EditCase(case_id="x", subject="Colosseum", prompt="Toyota is in", target_new="Rome")])
    assert all(torch.equal(editor.linears[l].weight, v) for l, v in w.items()) and not editor.cases
    with pytest.raises(ValueError, match="out of range"):
        MEMIT(model, tok, layers=[1, 7])
    assert default_memit_layers(model) == [1, 2]


@pytest.mark.real
def test_memit_on_the_real_model_and_the_gemma_trap(real):
    """A CounterFact fact at the default layers 2-4: said afterwards, with a small update; MEMIT
    without solving through Gemma's post-MLP norm wrecks the layers instead; detach() gives the
    weights back. (AlphaEdit edits the real model in notebook 02, which CI runs.)"""
    model, tok = real
    case = EditCase(case_id="d", subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux is",
                    target_new="English")
    w0 = {l: model.model.layers[l].mlp.down_proj.weight.detach().clone() for l in (2, 3, 4)}
    editor = MEMIT(model, tok)
    (info,) = editor.edit(case)
    assert info["residual_left"] < 1 and editor.score([case.prompt], ["English"])[0].exact == 1.0
    assert editor.norms[0] < 1.01 * editor.inspect("x")["original_norm"]
    editor.detach()
    naive = MEMIT(model, tok, through_norm=False)
    naive.edit(case)
    assert naive.norms[0] > 2 * naive.inspect("x")["original_norm"]
    naive.detach()
    assert all(torch.equal(model.model.layers[l].mlp.down_proj.weight, w) for l, w in w0.items())
