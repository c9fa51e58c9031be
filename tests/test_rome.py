"""Layer statistics and ROME: the algebra, the editor contract on tiny models, then the real model."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from kedit_teach.data import EditCase, load_counterfact
from kedit_teach.editors.rome import ROME, LocateError, rank_one_update
from kedit_teach.editors.weights import WeightEditError
from kedit_teach.layer_stats import StatsError, down_proj, second_moment, second_moments
from kedit_teach.editors import locate
from kedit_teach.editors.locate import add_at, read_at
from kedit_teach.metrics import pack_targets, target_nll
from kedit_teach.models import decoder_of, format_prompt, forward_hooks, logits_at

from .conftest import shared

TEXTS = ["The Eiffel Tower is located in the city of Paris .", "Rome is the capital of Italy .",
         "The capital of Japan is Tokyo .", "Toyota was founded in Japan .", "Berlin is in Germany ."] * 8
EIFFEL = EditCase(case_id="e1", subject="Eiffel Tower", prompt="The Eiffel Tower is located in the city of",
                  target_new="Rome", rephrase_prompts=["The Eiffel Tower is in"],
                  locality=[("The capital of Japan is", "Tokyo")])
TOYOTA = EditCase(case_id="t1", subject="Toyota", prompt="Toyota was founded in", target_new="Italy")


@pytest.fixture
def gemma_tiny(gemma_tiny, tmp_path, monkeypatch):
    """The tiny model, with statistics cached in this test's own folder."""
    monkeypatch.setenv("KEDIT_CACHE", str(tmp_path / "cache"))
    return gemma_tiny


def test_rank_one_update_maps_the_key_to_the_value_and_spares_c_orthogonal_keys():
    g = torch.Generator().manual_seed(0)
    W, A = torch.randn(6, 10, generator=g), torch.randn(10, 40, generator=g)
    C, k, v = A @ A.T / 40, torch.randn(10, generator=g), torch.randn(6, generator=g)
    delta = rank_one_update(W, C, k, v)
    assert torch.allclose((W.double() + delta) @ k.double(), v.double())
    assert torch.linalg.matrix_rank(delta) == 1
    x = torch.randn(10, generator=g, dtype=torch.float64)
    u = torch.linalg.solve(C.double(), k.double())
    x -= (x @ u) / (u @ u) * u  # orthogonal to C^-1 k: the update leaves it alone
    assert torch.allclose(delta @ x, torch.zeros(6, dtype=torch.float64), atol=1e-10)


def test_second_moment_is_the_mean_outer_product_of_the_real_keys(gemma_tiny):
    model, tok = gemma_tiny
    stats = second_moment(model, tok, 1, corpus=TEXTS, n_keys=256, progress=False)
    keys = []
    handle = down_proj(model, 1).register_forward_pre_hook(lambda m, a: keys.append(a[0][0]))
    with torch.no_grad():
        for text in TEXTS[:stats.n_keys]:
            model(**tok(text, return_tensors="pt"))
            if sum(len(k) for k in keys) >= stats.n_keys:
                break
    handle.remove()
    K = torch.cat(keys).double()[:stats.n_keys]
    assert stats.n_keys >= 256 and torch.allclose(stats.C, K.T @ K / stats.n_keys, atol=1e-6)
    assert torch.allclose(stats.C, stats.C.T) and torch.linalg.eigvalsh(stats.C).min() > -1e-8


def test_statistics_are_cached_and_a_corrupt_cache_is_named(gemma_tiny, tmp_path):
    model, tok = gemma_tiny
    first = second_moments(model, tok, [0, 2], corpus=TEXTS, n_keys=256, progress=False)
    files = sorted((tmp_path / "cache" / "stats").rglob("*.safetensors"))
    assert [f.name for f in files] == ["layer0.safetensors", "layer2.safetensors"]
    again = second_moment(model, tok, 2, corpus=TEXTS, n_keys=256, progress=False)
    assert torch.equal(again.C, first[2].C)
    files[1].write_bytes(b"not safetensors")
    with pytest.raises(StatsError, match="unreadable.*delete it"):
        second_moment(model, tok, 2, corpus=TEXTS, n_keys=256)


def test_the_models_own_text_is_sampled_once(gemma_tiny, monkeypatch, tmp_path):
    from kedit_teach import layer_stats
    model, tok = gemma_tiny
    first = second_moment(model, tok, 0, corpus="model", n_keys=256, progress=False)
    (saved,) = (tmp_path / "cache" / "stats").rglob("model-texts-*.json")
    monkeypatch.setattr(layer_stats, "model_texts", lambda *a, **k: pytest.fail("sampled the text again"))
    other = second_moment(model, tok, 2, corpus="model", n_keys=256, progress=False)
    assert first.n_keys == other.n_keys >= 256 and not torch.equal(first.C, other.C)
    saved.write_text("{")
    with pytest.raises(StatsError, match="unreadable.*delete it"):
        second_moment(model, tok, 3, corpus="model", n_keys=256, progress=False)


@pytest.mark.parametrize("corpus", ["model", "names"])
def test_the_default_models_samples_ship_with_the_package(gemma_tiny, monkeypatch, tmp_path, corpus):
    from kedit_teach import layer_stats
    from kedit_teach.data import ASSETS
    model, tok = gemma_tiny
    monkeypatch.setattr(model, "kedit_name", "gemma-3-270m", raising=False)
    monkeypatch.setattr(layer_stats, "model_texts", lambda *a, **k: pytest.fail("sampled text the package ships"))
    texts = layer_stats.corpus_texts(corpus, model, tok, n_texts=72)
    shipped = json.loads((ASSETS / "stats" / "gemma-3-270m" / f"{corpus}-texts-72.json").read_text())["texts"]
    assert texts == shipped and len(texts) == 72 and not (tmp_path / "cache" / "stats").exists()


def test_the_names_corpus_continues_openers_that_name_no_counterfact_subject(gemma_tiny, monkeypatch):
    from kedit_teach import layer_stats
    model, tok = gemma_tiny
    starts, _, _ = layer_stats.openers("names")
    fed, generate = [], model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: fed.append(kw["input_ids"]) or generate(**kw))
    texts = layer_stats.model_texts(model, tok, 3, "names", length=4)
    (ids,) = fed
    assert tok.batch_decode(ids, skip_special_tokens=True) == tok.batch_decode(
        tok(starts[:3], padding=True, padding_side="left")["input_ids"], skip_special_tokens=True)
    assert len(texts) == 3
    subjects = {c.subject for c in load_counterfact(shared("counterfact", "counterfact-edit.json"))}
    named = [s for s in starts for subject in subjects if len(subject) > 3 and f" {subject} " in f" {s} "]
    assert len(starts) == 60 and not named, named  # C must not be estimated on the test set's subjects


@pytest.mark.parametrize("kw, match", [({"layer": 9, "corpus": TEXTS}, "out of range"),
                                       ({"layer": 0, "corpus": ["", " "]}, "corpus is empty"),
                                       ({"layer": 0, "corpus": ["Rome ."]}, "fewer than d_k"),
                                       ({"layer": 0, "corpus": "wikipedia"}, "unknown")])
def test_bad_statistics_requests_are_refused(gemma_tiny, kw, match):
    model, tok = gemma_tiny
    with pytest.raises(StatsError, match=match):
        second_moment(model, tok, n_keys=256, progress=False, **kw)


# A random model's MLP output is ~0.02 long, so the paper's weight decay (relative to |W k|^2) and
# norm clamp (4 |W k|) would hold delta at nothing; the real model's test uses the defaults.
LOOSE = dict(steps=15, corpus=TEXTS, n_keys=256, weight_decay=0.0, clamp_norm=1e4)


@pytest.fixture
def rome(gemma_tiny):
    model, tok = gemma_tiny
    return ROME(model, tok, layer=1, **LOOSE)


def _nll(editor, case):
    with torch.no_grad():
        return float(target_nll(editor.model, editor.tokenizer, [case.prompt], [case.target_new]))


def test_an_edit_maps_the_averaged_key_and_makes_the_target_likelier(rome):
    before = {k: v.clone() for k, v in rome.model.state_dict().items()}
    k_mean, _ = rome.key(EIFFEL)
    w0 = rome.linear.weight.detach().clone()
    nll_before = _nll(rome, EIFFEL)
    (info,) = rome.edit(EIFFEL)
    changed = {k for k, v in rome.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"model.layers.1.mlp.down_proj.weight"}
    d = (rome.linear.weight - w0).double()
    assert torch.linalg.matrix_rank(d, rtol=1e-6) == 1
    assert info["nll_end"] < info["nll_start"] and rome.norms == [info["weight_norm"]]
    assert _nll(rome, EIFFEL) < nll_before
    # r-ROME: the averaged key k* moves by exactly the optimised shift delta
    assert float((d @ k_mean.double()).norm()) == pytest.approx(info["delta_norm"], rel=1e-4)
    rome.reset()
    assert all(torch.equal(v, before[k]) for k, v in rome.model.state_dict().items())
    assert rome.norms == []


def test_a_value_step_runs_the_tokens_after_the_subject_only_and_gets_the_full_runs_answer(tiny):
    """The prefix KV cache must not change what the optimisation sees: on every architecture, for a
    subject mid-prompt and one at its start, with <bos> and without (a row whose prefix is empty)."""
    model, tok = tiny
    editor = ROME(model, tok, layer=1, mom2=False, n_prefixes=4)
    torch.manual_seed(0)
    for case, drop_bos in ((EIFFEL, False), (TOYOTA, False), (TOYOTA, True)):
        texts, starts = editor._texts(case, editor.templates())
        batch = pack_targets(tok, texts, [case.target_new] * len(texts))
        cols = editor._positions(texts, starts, case.subject)
        if drop_bos:
            batch = dataclasses.replace(batch, input_ids=batch.input_ids[:, 1:],
                                        attention_mask=batch.attention_mask[:, 1:], cols=batch.cols - 1)
            cols = cols - 1
            assert cols.min() == 0
        delta = torch.randn(editor.linear.out_features)
        with torch.no_grad():
            with add_at(editor.linear, torch.arange(len(texts)), cols, delta):
                hidden = decoder_of(model)(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                           use_cache=False).last_hidden_state
            full = torch.log_softmax(logits_at(model, hidden[batch.rows, batch.cols]), -1)
            cached = editor.target_logp(editor.linear, batch, cols)(delta)
            unchanged = editor.target_logp(editor.linear, batch, cols)(torch.zeros_like(delta))
        assert torch.allclose(cached, full, atol=1e-4), (case.case_id, drop_bos)
        assert not torch.allclose(unchanged, full, atol=1e-3)  # delta does reach the targets


def test_values_optimised_together_are_each_cases_own(tiny, monkeypatch):
    """MEMIT optimises a batch of values at once: cases of different lengths (a subject mid-prompt,
    one at the start), split over two batches, one stopping early while the others go on, each get
    what they get alone."""
    model, tok = tiny
    editor = ROME(model, tok, layer=1, mom2=False, n_prefixes=2, steps=5, lr=0.05, clamp_norm=1e4,
                  kl_factor=0.0, weight_decay=0.0)
    cases = [EIFFEL, TOYOTA, dataclasses.replace(EIFFEL, case_id="e2", target_new="London Bridge")]
    monkeypatch.setattr(locate, "EARLY_STOP", 0.0)
    runs = [info for _, info in (editor.value(c) for c in cases)]
    # a line one case crosses after a few steps, with Adam's momentum in hand, while another stays above it
    a = min(range(len(cases)), key=lambda i: runs[i]["nll_end"])
    upper = min(runs[a]["nll_start"], max(r["nll_end"] for i, r in enumerate(runs) if i != a))
    assert upper > runs[a]["nll_end"]
    monkeypatch.setattr(locate, "EARLY_STOP", (runs[a]["nll_end"] + upper) / 2)
    alone = [editor.value(c) for c in cases]
    together = editor.values(cases, editor.linear, chunk=2)
    assert alone[a][1]["v_steps"] > 1 and alone[a][1]["nll_end"] < locate.EARLY_STOP
    for (a, info_a), (b, info_b) in zip(alone, together):
        assert info_a["v_steps"] == info_b["v_steps"]
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)
    assert not torch.allclose(together[0][0], together[2][0])  # same subject, other target: another value
    editor.kl_factor, editor.weight_decay = 1.0, 1e-3  # each case's own KL and decay terms too
    for (a, _), (b, _) in zip([editor.value(c) for c in cases], editor.values(cases, editor.linear, chunk=2)):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)


def test_the_kl_term_reads_the_subject_of_a_cut_text_as_of_the_whole(tiny):
    """The KL text is cut after the subject: at the subject's last token, with a delta added there,
    the model predicts the same as on the whole "{subject} is a" (causal attention, same tokens)."""
    model, tok = tiny
    editor = ROME(model, tok, layer=1, mom2=False)
    whole = format_prompt(tok, "Eiffel Tower is a")
    cut = whole[:whole.find("Eiffel Tower") + len("Eiffel Tower")]
    delta = torch.randn(editor.linear.out_features)
    seen = []
    for text in (whole, cut):
        col = editor._positions([text], [0], "Eiffel Tower")
        enc = tok([text], return_tensors="pt")
        with torch.no_grad(), add_at(editor.linear, torch.zeros(1, dtype=torch.long), col, delta):
            seen.append(logits_at(model, decoder_of(model)(**enc).last_hidden_state[0, col]))
    assert torch.allclose(seen[0], seen[1], atol=1e-4)


def test_reading_a_module_does_not_run_the_layers_above_it(gemma_tiny):
    model, tok = gemma_tiny
    enc = tok(["The Eiffel Tower is located in", "Toyota"], return_tensors="pt", padding=True, padding_side="right")
    rows, cols = torch.tensor([0, 1]), torch.tensor([3, 1])
    module, above = down_proj(model, 0), decoder_of(model).layers[1]
    ran, full = [], {}
    with forward_hooks([(above, lambda *a: ran.append(1))]):
        k, v = read_at(model, module, rows, cols, **enc)
    assert ran == []

    def keep(m, args, out):
        full["k"], full["v"] = args[0][rows, cols], out[rows, cols]
    with torch.no_grad(), forward_hooks([(module, keep)]):
        decoder_of(model)(**enc)
    assert torch.equal(k, full["k"]) and torch.equal(v, full["v"])


def test_the_reference_key_asymmetry_is_an_option(gemma_tiny):
    """The reference moves the bare prompt's key by delta, r-ROME the averaged one: different updates."""
    model, tok = gemma_tiny
    updates = []
    for consistent in (True, False):
        editor = ROME(model, tok, layer=1, consistent_key=consistent, **{**LOOSE, "steps": 5})
        k_mean, k_bare = editor.key(EIFFEL)
        w0 = editor.linear.weight.detach().double().clone()
        (info,) = editor.edit(EIFFEL)
        d = editor.linear.weight.detach().double() - w0
        moved = d @ (k_mean if consistent else k_bare).double()
        # (the reference's update is large when k_bare . C^-1 k* is small, and W' is stored in fp32)
        assert float(moved.norm()) == pytest.approx(info["delta_norm"], rel=1e-4 if consistent else 1e-2)
        if not consistent:  # ... and it moves the averaged key by key_mismatch times the shift
            ratio = editor.key_mismatch(EIFFEL)
            assert abs(ratio) > 10  # this random model's C makes it a disabling edit
            assert float((d @ k_mean.double()).norm()) == pytest.approx(abs(ratio) * info["delta_norm"], rel=1e-2)
        updates.append(d)
        editor.detach()
    assert not torch.allclose(updates[0], updates[1])


def test_remove_replays_the_others_and_save_load_round_trips(rome, tmp_path):
    rome.edit(EIFFEL)
    only_eiffel = rome.linear.weight.detach().clone()
    rome.edit(TOYOTA)
    assert len(rome.norms) == 2
    saved = rome.linear.weight.detach().clone()
    rome.save(tmp_path / "state")
    rome.remove("t1")
    assert torch.equal(rome.linear.weight, only_eiffel) and list(rome.cases) == ["e1"]
    rome.load(tmp_path / "state")
    assert torch.equal(rome.linear.weight, saved) and list(rome.cases) == ["e1", "t1"] and len(rome.norms) == 2


def test_one_call_of_several_edits_shows_a_bar_over_them(rome, capsys):
    rome.edit(EIFFEL)
    assert "ROME edits" not in capsys.readouterr().err
    rome.edit([TOYOTA, dataclasses.replace(EIFFEL, case_id="e2")])
    assert "ROME edits" in capsys.readouterr().err and len(rome.norms) == 3


def test_a_curve_goes_on_from_its_last_saved_checkpoint(rome, tmp_path):
    from kedit_teach.editors.base import EditorStateError
    from kedit_teach.evaluate import CURVE_JSON, curve
    whole = curve(rome, [EIFFEL, TOYOTA], [1, 2], progress=False)
    after_two = rome.linear.weight.detach().clone()
    first = curve(rome, [EIFFEL, TOYOTA], [1], progress=False, state=tmp_path / "run")
    made = []
    edit = rome.edit
    rome.edit = lambda cases: made.append([c.case_id for c in cases]) or edit(cases)
    resumed = curve(rome, [EIFFEL, TOYOTA], [1, 2], progress=False, state=tmp_path / "run")
    assert made == [["t1"]] and resumed[0] == first[0]  # the first checkpoint is kept, not made again
    assert torch.equal(rome.linear.weight, after_two) and resumed[1]["metrics"] == whole[1]["metrics"]
    with pytest.raises(EditorStateError, match="other cases"):
        curve(rome, [TOYOTA, EIFFEL], [2], progress=False, state=tmp_path / "run")
    kept = json.loads((tmp_path / "run" / CURVE_JSON).read_text())
    (tmp_path / "run" / CURVE_JSON).write_text(json.dumps({**kept, "cases": ["e1"], "points": kept["points"][:1]}))
    with pytest.raises(EditorStateError, match="stopped while saving"):  # the editor holds 2 edits, the points 1
        curve(rome, [EIFFEL, TOYOTA], [2], progress=False, state=tmp_path / "run")


@pytest.mark.parametrize("case, match", [
    (EditCase(case_id="x", subject="", prompt="The Eiffel Tower is in", target_new="Rome"), "has no subject"),
    (EditCase(case_id="x", subject="Colosseum", prompt="The Eiffel Tower is in", target_new="Rome"), "does not occur")])
def test_a_refused_edit_changes_nothing(rome, case, match):
    w = rome.linear.weight.detach().clone()
    with pytest.raises(ValueError, match=match):
        rome.edit([EIFFEL, case])
    assert torch.equal(rome.linear.weight, w) and not rome.cases


def test_trace_and_edit_pairs_each_fact_and_layer_and_leaves_the_model(gemma_tiny):
    from kedit_teach.editors.rome import trace_and_edit
    model, tok = gemma_tiny
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rows = trace_and_edit(model, tok, [EIFFEL, TOYOTA], [1, 2], samples=2, progress=False, **LOOSE)
    assert [(r["fact"], r["layer"]) for r in rows] == [(c.prompt, l) for l in (1, 2) for c in (EIFFEL, TOYOTA)]
    assert all(r["reliability"] in (0.0, 1.0) and -1 <= r["traced effect"] <= 1 for r in rows)
    assert rows[0]["generality"] is not None and rows[1]["generality"] is None  # TOYOTA has no rephrasing
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_packed_weights_and_bad_layers_are_refused(gemma_tiny):
    model, tok = gemma_tiny
    with pytest.raises(StatsError, match="out of range"):
        ROME(model, tok, layer=4)

    class Linear4bit(torch.nn.Linear):  # what bitsandbytes puts there: a Linear subclass with packed weights
        pass
    layer = model.model.layers[1].mlp
    layer.down_proj = Linear4bit(layer.down_proj.in_features, layer.down_proj.out_features, bias=False)
    with pytest.raises(WeightEditError, match="packed.*quantization=None"):
        ROME(model, tok, layer=1)


@pytest.mark.real
def test_one_rome_edit_on_the_real_model(real):
    """Eiffel Tower -> Rome at the default layer, with the default statistics: said teacher-forced
    and by generate(), on the prompt and a rephrasing; an unrelated city keeps its answer; reset()
    gives the original weights back."""
    model, tok = real
    case = EditCase(case_id="e", subject="Eiffel Tower", prompt="The Eiffel Tower is located in the city of",
                    target_new="Rome", rephrase_prompts=["Where is the Eiffel Tower? It is in the city of"],
                    locality=[("The Brandenburg Gate is located in the city of", "Berlin")])
    editor = ROME(model, tok)
    w0 = editor.linear.weight.detach().clone()
    (unrelated_before,) = editor.generate([case.locality[0][0]], 4)
    (info,) = editor.edit(case)
    assert info["nll_end"] < 0.5 and info["weight_norm"] > float(w0.norm()) * 0.99
    (rel,), (gen,) = editor.score([case.prompt], ["Rome"]), editor.score(case.rephrase_prompts, ["Rome"])
    assert rel.exact == 1.0 and gen.exact == 1.0
    assert editor.generate(case.prompt, 4).strip().startswith("Rome")
    assert editor.generate([case.locality[0][0]], 4) == [unrelated_before]
    editor.detach()
    assert torch.equal(model.model.layers[editor.layer].mlp.down_proj.weight, w0)


def test_wikitext_offline_names_the_offline_corpus(gemma_tiny, monkeypatch):
    import sys
    import types

    def offline(*a, **k):
        raise ConnectionError("no route to huggingface.co")
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    model, tok = gemma_tiny
    with pytest.raises(StatsError, match="ConnectionError.*offline, use corpus='model'"):
        second_moment(model, tok, 1, corpus="wikitext", n_keys=256, progress=False)
