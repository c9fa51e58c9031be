"""RECIPE: continuous prompts through inputs_embeds, the trained modules, the sentinel rule, the editor.

Tiny random Gemma-3 models with the real MiniLM encoder and a real faiss memory; untrained modules
(random weights) are enough to test the plumbing, and the training tests check that losses fall.
The shipped modules on the real 270M model are tested at the end (marked `real`).
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
from dataclasses import asdict, replace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from kedit_teach import prompt_learning as pl
from kedit_teach.data import EditCase
from kedit_teach.editors import RECIPE, EditorStateError, NoEdit
from kedit_teach.metrics import generate_greedy, normalize, repetition, says, splice_prefixes, teacher_forced
from kedit_teach.models import encode_prompts, format_prompt, hidden_states, load_model, logits_at

from .conftest import cli_error, shared

CITIES = ["Paris", "Rome", "Tokyo", "Berlin", "London", "Madrid", "Vienna", "Oslo"]
EDIT = EditCase(case_id="e1", subject="Eiffel Tower", prompt="The Eiffel Tower is located in the city of",
                target_new="Rome", rephrase_prompts=["Where is the Eiffel Tower? It is in"],
                locality=[("The capital of Japan is", "Tokyo")])
OTHER = EditCase(case_id="e2", subject="Toyota", prompt="Toyota was founded in", target_new="Germany")


def cases(n: int) -> list[EditCase]:
    return [EditCase(case_id=f"t{i}", subject=f"Tower {CITIES[i % 8]} {CITIES[i // 8 % 8]}",
                     prompt=f"Tower {CITIES[i % 8]} {CITIES[i // 8 % 8]} is located in the city of",
                     target_new=CITIES[(i + 1) % 8],
                     rephrase_prompts=[f"Where is Tower {CITIES[i % 8]} {CITIES[i // 8 % 8]} ? It is in"],
                     locality=[(f"The capital of {CITIES[(i + 2) % 8]} is", CITIES[(i + 3) % 8])]) for i in range(n)]


def training_file(path, n: int, **fields):
    """`cases(n)` in CounterFact's flat format, each with its own subject, as a training data file."""
    path.write_text(json.dumps([{"case_id": i, "prompt": c.prompt, "target_new": c.target_new, "subject": f"S{i}",
                                 **fields, "rephrase_prompt": c.rephrase_prompts[0],
                                 "locality_prompt": c.locality[0][0], "locality_ground_truth": c.locality[0][1]}
                                for i, c in enumerate(cases(n))]))
    return path


@contextlib.contextmanager
def stopped_after_a_checkpoint(monkeypatch, module, save_name: str):
    """Inside: `module.save_name` (a save of trained weights) raises KeyboardInterrupt right after it
    writes a partial checkpoint, as if the session ended there; afterwards it saves as before."""
    save = getattr(module, save_name)

    def stop(trained, path, record):
        save(trained, path, record)
        if record.get("partial"):
            raise KeyboardInterrupt
    monkeypatch.setattr(module, save_name, stop)
    with pytest.raises(KeyboardInterrupt):
        yield
    monkeypatch.setattr(module, save_name, save)


@pytest.fixture(scope="module")
def tiny_model(tiny_dirs):
    return load_model(str(tiny_dirs["gemma3"]))


@pytest.fixture(scope="module")
def modules(tiny_model, encoder):
    return pl.RecipeModules(pl.ModuleConfig.for_model(tiny_model[0], d_rep=32), encoder)


@pytest.fixture
def recipe(tiny_model, modules):
    return RECIPE(*tiny_model, modules=modules)


# ----------------------------------------------------------------------------- inputs_embeds

def prefix(model, n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, model.config.hidden_size, generator=g)


def test_splice_puts_vectors_after_bos_and_pads_on_the_given_side(tiny_model):
    model, tok = tiny_model
    enc = encode_prompts(tok, ["Rome is the capital of Italy .", "Paris"], "cpu")
    p = prefix(model)
    for left in (True, False):
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if not left:  # the same rows, right-padded
            ids = torch.stack([torch.cat([r[m.bool()], r[~m.bool()]]) for r, m in zip(ids, mask)])
            mask = mask.sort(1, descending=True).values
        embeds, new_mask, inserted = splice_prefixes(model, ids, mask, [None, p], left_pad=left)
        assert inserted.tolist() == [0, 3] and new_mask.sum(1).tolist() == [int(mask[0].sum()), int(mask[1].sum()) + 3]
        row = embeds[1][new_mask[1].bool()]
        real = ids[1][mask[1].bool()]
        assert int(real[0]) == tok.bos_token_id
        torch.testing.assert_close(row[1:4], p)  # right after <bos>
        torch.testing.assert_close(row[[0, *range(4, len(row))]], model.get_input_embeddings()(real[None])[0])
        first = embeds[0][new_mask[0].bool()]
        torch.testing.assert_close(first, model.get_input_embeddings()(ids[0][mask[0].bool()][None])[0])
        assert bool(new_mask[1, -1] if left else new_mask[1, 0])


def test_teacher_forced_with_prefixes_equals_a_manual_forward(tiny_model):
    model, tok = tiny_model
    texts, targets = ["Rome is the capital of", "The Colosseum is in"], ["Italy", "Rome"]
    p = [prefix(model, 3, 1), prefix(model, 2, 2)]
    scores = teacher_forced(model, tok, texts, targets, prefixes=p)
    for text, target, vectors, score in zip(texts, targets, p, scores):
        ids = tok(text + " " + target)["input_ids"]
        embed = model.get_input_embeddings()(torch.tensor([ids]))[0]
        inputs = torch.cat([embed[:1], vectors, embed[1:]])[None]
        logits = logits_at(model, hidden_states(model, inputs_embeds=inputs))[0]
        n_prompt = len(tok(text)["input_ids"])
        cols = range(n_prompt - 1 + len(vectors), len(ids) - 1 + len(vectors))
        assert score.pred_ids == [int(logits[c].argmax()) for c in cols]


def test_generation_with_a_prefix_and_kv_cache_equals_a_manual_greedy_loop(tiny_model):
    model, tok = tiny_model
    texts = [format_prompt(tok, t) for t in ("Rome is the capital of", "Paris")]
    p = [prefix(model, 3, 3), None]
    got = generate_greedy(model, tok, texts, 6, prefixes=p)
    for text, vectors, out in zip(texts, p, got):
        assert out == tok.decode(embed_greedy(model, tok, text, vectors, 6), skip_special_tokens=True)


def embed_greedy(model, tok, text: str, vectors: torch.Tensor | None, steps: int) -> list[int]:
    """Greedy new ids for `text` with `vectors` after <bos>: no cache, the whole sequence every step."""
    embed = model.get_input_embeddings()
    seq = embed(torch.tensor([tok(text)["input_ids"]]))[0]
    if vectors is not None:
        seq = torch.cat([seq[:1], vectors, seq[1:]])
    new = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(logits_at(model, hidden_states(model, inputs_embeds=seq[None]))[0, -1].argmax())
            new.append(nxt)
            seq = torch.cat([seq, embed(torch.tensor([nxt]))])
    return new


def test_until_drops_the_prefix_once_the_text_is_said_and_goes_on_from_the_words(tiny_model):
    model, tok = tiny_model
    texts = [format_prompt(tok, t) for t in ("Rome is the capital of", "The Colosseum is in", "Paris")]
    p, budget = [prefix(model, 3, 4), prefix(model, 3, 5), prefix(model, 3, 6)], 10
    kept = generate_greedy(model, tok, texts, budget, prefixes=p)
    new = embed_greedy(model, tok, texts[0], p[0], budget)
    word = next(w for j in range(1, budget) for w in normalize(tok.decode(new[:j], skip_special_tokens=True)).split())
    got = generate_greedy(model, tok, texts, budget, prefixes=p, until=[word, None, "never said in any output"])
    assert got[1:] == kept[1:]  # no text, or a text never said: the prefix stays to the end
    # where the row first says the word, it goes on as plain text from the prompt and its words so far
    step = next(j for j in range(1, budget + 1) if says(tok.decode(new[:j], skip_special_tokens=True), word))
    said = tok.decode(new[:step], skip_special_tokens=True)
    assert step < budget and got[0] == said + generate_greedy(model, tok, [texts[0] + said], budget - step)[0]
    assert got[0] != kept[0]


# ----------------------------------------------------------------------------- the modules

def test_pool_ignores_padding(modules):
    short, long = "Rome", "The Eiffel Tower is located in the city of Paris in France"
    alone = modules.features([short])
    batched = modules.features([short, long])
    tol = 5e-2 if pl.fast_bf16(modules.encoder) else 1e-5  # bfloat16 kernels differ by batch shape
    torch.testing.assert_close(batched[0], alone[0], atol=tol, rtol=tol)
    assert F.cosine_similarity(batched[:1], alone).item() > 0.9999
    assert alone.shape == (1, 3 * 384)


def test_the_traced_encoder_equals_transformers_and_stays_out_of_the_weights(tiny_model, encoder):
    mods = pl.RecipeModules(pl.ModuleConfig.for_model(tiny_model[0], d_rep=32, finetune_encoder=True), encoder)
    texts = ["Rome", "The Eiffel Tower is located in the city of Paris in France", "Where is it?"]
    enc = mods.tokens(texts)

    def eager() -> torch.Tensor:
        with torch.no_grad():
            return pl.pool(mods.encoder(**enc).last_hidden_state, enc["attention_mask"])
    torch.testing.assert_close(mods.features(texts), eager(), atol=1e-5, rtol=1e-5)  # padded batch
    torch.testing.assert_close(mods.features(texts[1:2]), eager()[1:2], atol=1e-5, rtol=1e-5)
    before, fingerprint, names = mods.features(texts), mods.fingerprint(), set(mods.state_dict())
    with torch.no_grad():  # a fine-tuning step changes f_rm: the trace shares its weights, so it follows
        mods.encoder.encoder.layer[0].output.dense.weight.mul_(1.5)
    assert not torch.allclose(mods.features(texts), before)
    torch.testing.assert_close(mods.features(texts), eager(), atol=1e-5, rtol=1e-5)
    assert set(mods.state_dict()) == names and mods.fingerprint() != fingerprint  # the copy, not the trace
    with torch.enable_grad():  # fine-tuning backpropagates through the eager encoder
        assert mods.features(texts[:1]).requires_grad


def test_a_frozen_encoder_runs_in_bfloat16_where_the_cpu_has_it_and_keeps_the_features(modules):
    texts = ["Rome", "The Eiffel Tower is located in the city of Paris in France", "Where is it?"]
    enc = modules.tokens(texts)
    with torch.no_grad():
        exact = pl.pool(modules.encoder(**enc).last_hidden_state, enc["attention_mask"])
    got = modules.features(texts)
    assert got.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(got, exact).min() > 0.9999
    assert modules.encoder.dtype == torch.float32  # the shared encoder (LTE's) is not converted
    assert not any("_trace" in k for k in modules.state_dict())
    if pl.fast_bf16(modules.encoder):  # a frozen bfloat16 copy: its own constants, not the shared weights
        assert not list(modules.traced_encoder().parameters()) and not torch.equal(got, exact)
    else:
        torch.testing.assert_close(got, exact, atol=1e-5, rtol=1e-5)


def test_untrained_prompts_are_the_answers_embeddings_on_the_token_sphere(modules, tiny_model, encoder):
    model, tok = tiny_model
    answers = ["Rome", "Tokyo Paris"]
    anchors = pl.answer_anchors(model, tok, answers, 3)
    ids = [tok(" " + a, add_special_tokens=False)["input_ids"] for a in answers]
    embed = model.get_input_embeddings()
    torch.testing.assert_close(anchors[1, :len(ids[1])], embed(torch.tensor(ids[1][:3])))
    torch.testing.assert_close(anchors[0, -1], embed(torch.tensor(ids[0][-1])))  # the last token repeated
    r, p = modules.knowledge(modules.features(["a fact", "another fact"]), anchors)
    assert r.shape == (2, 32 + 384) and p.shape == (2, 3, model.config.hidden_size)
    norm = modules.config.prompt_norm
    torch.testing.assert_close(p, torch.nn.functional.normalize(anchors, dim=-1) * norm)
    assert norm == pytest.approx(float(embed(torch.arange(3, 60)).norm(dim=-1).median()), rel=0.1)
    with pytest.raises(ValueError, match="anchors"):
        modules.knowledge(modules.features(["a fact"]))
    plain = pl.RecipeModules(pl.ModuleConfig.for_model(model, d_rep=32, answer_anchor=False), encoder)
    assert plain.knowledge(plain.features(["a fact"]))[1].shape == (1, 3, model.config.hidden_size)


def test_widened_prompts_keep_the_trained_vectors_and_start_the_new_ones_on_the_answer(tiny_model, encoder):
    model, tok = tiny_model
    modules = pl.RecipeModules(pl.ModuleConfig.for_model(model, d_rep=32), encoder)  # its own: it changes shape
    torch.manual_seed(0)
    for p in modules.mlp_p.parameters():  # as if trained: no zero layer left
        torch.nn.init.normal_(p, std=0.05)
    answers = ["Rome", "Tokyo Paris Lisbon Oslo Bern"]
    f = modules.features(["a fact", "another fact"])
    before = modules.knowledge(f, pl.answer_anchors(model, tok, answers, 3))[1]
    modules.widen_prompts(5)
    anchors = pl.answer_anchors(model, tok, answers, 5)
    after = modules.knowledge(f, anchors)[1]
    assert after.shape == (2, 5, model.config.hidden_size) and modules.config.n_prompt_tokens == 5
    torch.testing.assert_close(after[:, :3], before)
    torch.testing.assert_close(after[:, 3:], torch.nn.functional.normalize(anchors[:, 3:], dim=-1) * modules.config.prompt_norm)
    with pytest.raises(ValueError, match="widen only grows"):
        modules.widen_prompts(4)


def test_the_sentinel_goes_below_the_embedding_layer_and_learns(modules):
    modules.sentinel.grad = None
    modules.r_sentinel().sum().backward()
    assert modules.sentinel.grad is not None and modules.sentinel.grad.abs().sum() > 0
    assert all(p.grad is None for p in modules.encoder.parameters())  # f_rm frozen
    modules.zero_grad(set_to_none=True)
    # bypassing the embeddings: not what the BERT embedding layer would make of the same vectors
    with torch.no_grad():
        via_embeddings = modules.encoder(inputs_embeds=modules.sentinel[None]).last_hidden_state
        direct = modules.encoder.encoder(modules.sentinel[None]).last_hidden_state
    assert not torch.allclose(via_embeddings, direct)


def test_info_nce_is_the_formula_and_exclude_drops_one_key():
    q, keys = torch.randn(2, 4), torch.randn(3, 4)
    got = pl.info_nce(q, keys, torch.tensor([0, 2]))
    s = q @ keys.T / 2
    assert got.tolist() == pytest.approx([(-s[0, 0] + s[0].logsumexp(0)).item(), (-s[1, 2] + s[1].logsumexp(0)).item()], rel=1e-5)
    hide = torch.tensor([[True, False, False], [False, True, False]])
    dropped = pl.info_nce(q, keys, torch.tensor([2, 2]), exclude=hide)
    assert dropped[0].item() == pytest.approx((-s[0, 2] + s[0, 1:].logsumexp(0)).item(), rel=1e-5)
    assert dropped[1].item() == pytest.approx((-s[1, 2] + s[1, [0, 2]].logsumexp(0)).item(), rel=1e-5)


def test_prompt_learning_loss_is_low_when_queries_sit_on_their_knowledge():
    r_k = torch.eye(4)[:3] * 20
    theta = torch.eye(4)[3] * 20
    good = pl.prompt_learning_loss(r_k, theta, r_k, r_k, theta.expand(3, 4))
    bad = pl.prompt_learning_loss(r_k, theta, theta.expand(3, 4), theta.expand(3, 4), r_k)
    assert good["no"] < 0.01 and good["so"] < bad["so"] and bad["no"] > 10
    # L_so's edit-query terms exclude the own knowledge: the sentinel must win among the rest
    assert good["so"] > 2 * math.log(3) * 0.9


def test_bank_keys_are_negatives_and_a_clash_hides_the_own_knowledge():
    r_k, theta = torch.eye(4)[:2] * 10, torch.eye(4)[3] * 10
    bank = torch.eye(4)[[0, 2]] * 10  # a copy of row 0's knowledge, and another edit's key
    plain = pl.prompt_learning_loss(r_k, theta, r_k, r_k, theta.expand(2, 4))
    copied = pl.prompt_learning_loss(r_k, theta, r_k, r_k, theta.expand(2, 4), bank=bank)
    hidden = pl.prompt_learning_loss(r_k, theta, r_k, r_k, theta.expand(2, 4), bank=bank,
                                     clash=torch.tensor([[True, False], [False, False]]))
    # the copy scores as high as row 0's own key: p(own) halves, twice (q_e and q_g), over 2 rows
    assert copied["no"].item() == pytest.approx(math.log(2), rel=1e-3) and plain["no"] < 1e-6
    assert hidden["no"] < 1e-6
    # more locality prompts must reach the sentinel: one sitting on a key costs, one on the sentinel doesn't
    assert pl.prompt_learning_loss(r_k, theta, r_k, r_k, theta.expand(2, 4), r_x=r_k[:1])["so"] > plain["so"] + 10
    assert pl.prompt_learning_loss(r_k, theta, r_k, r_k, theta.expand(2, 4), r_x=theta[None])["so"] == \
        pytest.approx(plain["so"].item(), abs=1e-6)


def test_mined_batches_put_each_seed_beside_its_look_alikes():
    import random
    feats = torch.randn(40, 8)
    pool = pl.nearest(feats, 3, chunk=16)
    sims = torch.nn.functional.normalize(feats, dim=-1) @ torch.nn.functional.normalize(feats, dim=-1).T
    sims.fill_diagonal_(-2)
    assert torch.equal(pool, sims.topk(3, dim=-1).indices)
    batches = pl.neighbour_batches(pool, 16, random.Random(0))
    for _ in range(5):
        b = next(batches)
        assert len(b) == len(set(b)) == 16 and set(pool[b[0]].tolist()) <= set(b)


def test_the_fluency_loss_looks_past_the_answer_and_leaves_l_rel_as_it_was(tiny_model, modules):
    model, tok = tiny_model
    examples = [pl.training_example(c) for c in cases(4)]
    said: dict[str, str] = {}
    conts = pl.unedited_continuations(model, tok, examples, 4, said)
    joined = [format_prompt(tok, e.q_e) + " " + e.a_e for e in examples]
    assert conts == generate_greedy(model, tok, joined, 4) and set(said) == set(joined)
    anchors = pl.answer_anchors(model, tok, [e.a_e for e in examples], 3)
    with torch.no_grad():
        prompts = modules.prompts(modules.mlp_k(modules.features([e.knowledge for e in examples])), anchors)
        plain = pl.edit_loss(model, tok, examples, prompts)
        past = pl.edit_loss(model, tok, examples, prompts, conts)
        none = pl.edit_loss(model, tok, examples, prompts[:, :0], conts)  # no vectors: the unedited model
    assert "flu" not in plain and past["flu"] > 1e-4 and none["flu"].abs() < 1e-5
    # causal attention: the answer's positions never see the continuation, so L_rel is unchanged
    assert past["rel"].item() == pytest.approx(plain["rel"].item(), rel=1e-4)


def test_training_examples_take_rephrasings_or_aliases_and_need_locality():
    e = pl.training_example(EDIT)
    assert (e.q_g, e.a_g, e.q_l, e.a_l, e.knowledge) == (EDIT.rephrase_prompts[0], "Rome", "The capital of Japan is",
                                                          "Tokyo", EDIT.descriptor)
    alias = EditCase(case_id="a", subject="X", prompt="X is in", target_new="Rome",
                     portability=[("The capital of X's country is", "Italy"), ("Y (alias of X) is in", "Rome")],
                     locality=[("Z is in", "Paris")])
    assert pl.training_example(alias).q_g == "Y (alias of X) is in"
    assert pl.training_example(OTHER) is None
    three = EditCase(case_id="m", subject="X", prompt="X is in", target_new="Rome", rephrase_prompts=["X lies in"],
                     locality=[("A is in", "Paris"), ("B is in", "Oslo"), ("A is in", "Paris")])
    assert pl.training_example(three).more_locality == ("B is in",)  # the others, once each


def test_more_locality_prompts_never_pull_another_examples_query_to_the_sentinel():
    examples, record = pl.training_examples(specs=[], held_out=[])  # the teaching set's training cases
    asked = {q for e in examples for q in (e.q_e, e.q_g)}
    assert record["sources"] == [f"teach[{pl.TEACH_HELD_OUT}:]"] and "zsre_split" not in record
    assert sum(bool(e.more_locality) for e in examples) > len(examples) // 3
    assert not any(q in asked for e in examples for q in e.more_locality)


def test_training_lowers_the_losses(tiny_model, encoder):
    model, tok = tiny_model
    fresh = pl.RecipeModules(pl.ModuleConfig.for_model(model, d_rep=32), encoder)
    examples = [pl.training_example(c) for c in cases(32)]
    curves = pl.train_modules(fresh, model, tok, examples,
                              pl.TrainConfig(steps=40, batch_size=4, contrastive_batch=16, lr=3e-3, edit_every=2),
                              progress=False)
    assert set(curves) == {"total", "rel", "gen", "loc", "flu", "no", "so"} and len(curves["total"]) == 40
    assert curves["flu"] == []  # fluency_weight 0: L_flu is not computed
    assert len(curves["rel"]) == len(curves["loc"]) == 20 and len(curves["so"]) == 40  # L_edit every 2nd step
    mined = pl.train_modules(pl.RecipeModules(pl.ModuleConfig.for_model(model, d_rep=32), encoder), model, tok, examples,
                             pl.TrainConfig(steps=6, batch_size=2, contrastive_batch=8, edit_every=3, bank=12,
                                            neighbours=3, fluency_weight=0.5, continuation_tokens=3), progress=False)
    assert len(mined["flu"]) == 2 and len(mined["so"]) == 6
    for total, rel, gen, loc, flu, no, so in zip(*(mined[k][::3] for k in ("total",)), *(mined[k] for k in ("rel", "gen", "loc", "flu")),
                                                 mined["no"][::3], mined["so"][::3]):
        assert total == pytest.approx(rel + gen + 0.2 * loc + 0.5 * flu + no + so, rel=1e-4)
    first, last = (sum(v[:5]) / 5 for v in (curves["rel"], curves["so"])), (sum(v[-5:]) / 5 for v in (curves["rel"], curves["so"]))
    for a, b in zip(first, last):
        assert b < a
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.parameters())  # the LLM is frozen


def test_prompt_only_training_moves_mlp_p_and_keeps_retrieval(tiny_model, encoder):
    model, tok = tiny_model
    mods = pl.RecipeModules(pl.ModuleConfig.for_model(model, d_rep=32), encoder)
    retrieval = {k: v.clone() for k, v in mods.trained_state().items() if not k.startswith("mlp_p.")}
    prompts = {k: v.clone() for k, v in mods.trained_state().items() if k.startswith("mlp_p.")}
    examples = [pl.training_example(c) for c in cases(12)]  # fewer than a contrastive batch: not needed here
    cfg = pl.TrainConfig(steps=8, batch_size=4, prompt_lr=3e-2, prompt_learning=False, loc_weight=0.25)
    curves = pl.train_modules(mods, model, tok, examples, cfg, progress=False)
    assert len(curves["rel"]) == len(curves["total"]) == 8 and not curves["no"] and not curves["so"]  # L_edit every step
    for total, rel, gen, loc in zip(*(curves[k] for k in ("total", "rel", "gen", "loc"))):
        assert total == pytest.approx(rel + gen + 0.25 * loc, rel=1e-5)  # lambda_loc weighs L_loc; the curve keeps the KL
    after = mods.trained_state()
    assert all(torch.equal(after[k], v) for k, v in retrieval.items())  # keys, queries and the sentinel as they were
    assert any(not torch.equal(after[k], v) for k, v in prompts.items())
    with pytest.raises(ValueError, match="nothing to train"):
        pl.train_modules(mods, model, tok, examples, pl.TrainConfig(edit_loss=False, prompt_learning=False))


def test_query_layers_start_as_f_rm_train_on_cached_states_and_leave_keys_and_prompts(tiny_model, encoder, tmp_path):
    model, tok = tiny_model
    mods = pl.RecipeModules(pl.ModuleConfig.for_model(model, d_rep=32), encoder)
    texts = ["Where is the Eiffel Tower?", "a", "Who founded Toyota, and in which year was it founded?"]
    plain = mods.query_features(texts)
    mods.add_query_layers(1)
    copied = mods.query_features(texts)  # a copy of f_rm: no decision changes yet
    if pl.fast_bf16(encoder):  # the frozen f_rm runs a bfloat16 trace there, the trained copy fp32
        assert F.cosine_similarity(copied, plain).min() > 0.999
    else:
        torch.testing.assert_close(copied, plain)
    states = mods.lower_states(texts)
    assert [len(s) for s in states] == mods.tokens(texts)["attention_mask"].sum(1).tolist()  # padding dropped
    torch.testing.assert_close(mods.query_layers_pass(states, chunk=2), copied, atol=1e-5, rtol=1e-5)
    shipped = [k for k in mods.trained_state() if k.startswith("query_encoder.")]
    assert shipped and all(k.startswith("query_encoder.encoder.layer.5.") for k in shipped)  # the top layer alone
    keep = {k: v.clone() for k, v in mods.trained_state().items() if k.startswith(("mlp_k.", "mlp_p."))}
    knowledge = mods.features(texts)
    examples = [pl.training_example(c) for c in cases(32)]
    curves = pl.train_modules(mods, model, tok, examples, pl.TrainConfig(
        steps=4, contrastive_batch=16, edit_loss=False, queries_only=True, encoder_lr=1e-3), progress=False)
    assert len(curves["so"]) == 4 and not curves["rel"]
    after = mods.trained_state()
    assert all(torch.equal(after[k], v) for k, v in keep.items())  # keys and prompts as they were
    torch.testing.assert_close(mods.features(texts), knowledge)  # the knowledge side's f_rm is frozen
    moved = mods.query_features(texts)
    assert (moved - plain).abs().max() > 1e-3
    torch.testing.assert_close(mods.query_layers_pass(states), moved, atol=1e-5, rtol=1e-5)  # train = inference path
    loaded, _ = pl.load_modules(pl.save_modules(mods, tmp_path / "q", {"modules": asdict(mods.config)}), encoder=encoder)
    torch.testing.assert_close(loaded.query_features(texts), moved)
    assert loaded.fingerprint() == mods.fingerprint() and "queries only" in loaded.architecture()[1]["part"]
    with pytest.raises(ValueError, match="pick 1 to 6"):
        pl.RecipeModules(pl.ModuleConfig.for_model(model, d_rep=32), encoder).add_query_layers(7)
    with pytest.raises(ValueError, match="pick one"):
        pl.RecipeModules(pl.ModuleConfig.for_model(model, d_rep=32, finetune_encoder=True, query_layers=1), encoder)


def test_save_load_modules_roundtrip_and_refusals(tmp_path, modules, tiny_dirs, encoder):
    path = pl.save_modules(modules, tmp_path / "m", {"modules": asdict(modules.config)})
    loaded, record = pl.load_modules(path, encoder=encoder)
    assert loaded.fingerprint() == modules.fingerprint() == record["fingerprint"]
    assert not any(k.startswith("encoder.") for k in load_file(str(path / pl.WEIGHTS_FILE)))  # frozen: not shipped
    other, _ = load_model(str(tiny_dirs["llama"]))
    other.config.hidden_size = 96
    with pytest.raises(pl.ModuleError, match="hidden_size=64.*hidden_size=96.*train recipe"):
        pl.load_modules(path, other, encoder)
    (path / pl.WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(pl.ModuleError, match="corrupt"):
        pl.load_modules(path, encoder=encoder)
    (path / pl.RECORD_FILE).write_text("{")
    with pytest.raises(pl.ModuleError, match="malformed"):
        pl.load_modules(path, encoder=encoder)


# ----------------------------------------------------------------------------- the editor

def test_edit_is_one_pass_batched_like_one_by_one(tiny_model, modules):
    one, many = RECIPE(*tiny_model, modules=modules), RECIPE(*tiny_model, modules=modules)
    for c in cases(4):
        one.edit(c)
    infos = many.edit(cases(4))
    assert [i["memory_size"] for i in infos] == [4] * 4 and len(many._prompts) == 4
    ids = [c.case_id for c in cases(4)]
    torch.testing.assert_close(torch.from_numpy(many.memory.vectors(ids)), torch.from_numpy(one.memory.vectors(ids)),
                               atol=1e-5, rtol=1e-4)


def test_the_sentinel_rule_attaches_only_above_the_sentinel(recipe):
    recipe.edit(cases(12))
    queries = [p for c in cases(12) for p in (c.prompt, c.rephrase_prompts[0], c.locality[0][0])]
    decisions = recipe.retrieve(queries)
    prefixes = recipe.prompt_prefixes(queries)
    for d, p in zip(decisions, prefixes):
        assert d.top and d.top[0].score >= d.top[-1].score
        assert (d.attached is not None) == (d.top[0].score > d.sentinel)
        assert (p is None) == (d.attached is None)
        if p is not None:
            assert torch.equal(p, recipe._prompts[d.attached])
    info = recipe.inspect(queries[0])
    assert info["sentinel"] == pytest.approx(decisions[0].sentinel) and len(info["knowledge"]) == 5
    assert info["attached"] == decisions[0].attached


def test_a_fixed_threshold_replaces_the_sentinel(tiny_model, modules):
    always = RECIPE(*tiny_model, modules=modules, sentinel=False, threshold=-1e9)
    never = RECIPE(*tiny_model, modules=modules, sentinel=False, threshold=1e9)
    for editor in (always, never):
        editor.edit(cases(3))
    q = [c.locality[0][0] for c in cases(3)]
    assert all(p is not None for p in always.prompt_prefixes(q))
    assert never.prompt_prefixes(q) == [None] * 3
    assert always.config()["threshold"] == -1e9 and always.inspect(q[0])["gate"] == "threshold"


def test_without_prompts_retrieval_runs_but_nothing_is_attached(tiny_model, modules):
    editor = RECIPE(*tiny_model, modules=modules, sentinel=False, threshold=-1e9, prompts=False)
    editor.edit(cases(3))
    assert editor.retrieve([cases(3)[0].prompt])[0].top
    assert editor.prompt_prefixes([cases(3)[0].prompt]) is None
    assert editor.inspect(cases(3)[0].prompt)["attached"] is None


def test_scoring_a_target_cannot_change_what_is_retrieved(tiny_model, modules, monkeypatch):
    editor = RECIPE(*tiny_model, modules=modules, sentinel=False, threshold=-1e9)
    editor.edit(cases(8))
    seen = []
    features = editor.modules.features
    monkeypatch.setattr(editor.modules, "features",
                        lambda texts, what="text", encoder=None: seen.extend(texts) or features(texts, what, encoder))
    prompt = cases(8)[0].prompt
    first = editor.score([prompt], [cases(8)[5].target_new])
    editor._decisions.clear()
    second = editor.score([prompt], [cases(8)[5].descriptor.split(" is ")[0] + " Tokyo"])
    assert seen == [prompt, prompt]  # the prompt alone, never with a target
    assert editor.retrieve([prompt])[0].attached == editor.retrieve([prompt])[0].top[0].id
    assert first[0].target_ids != second[0].target_ids


def test_unrelated_queries_and_reset_give_the_base_model_bit_for_bit(tiny_model, modules):
    model, tok = tiny_model
    editor = RECIPE(model, tok, modules=modules, sentinel=False, threshold=1e9)  # never attaches
    prompts, targets = [EDIT.prompt, "The capital of Japan is"], ["Rome", "Tokyo"]
    before = (editor.score(prompts, targets), editor.generate(prompts, 5))
    editor.edit(cases(5))
    assert (editor.score(prompts, targets), editor.generate(prompts, 5)) == before
    editor.threshold = -1e9
    with editor.unedited():
        assert (editor.score(prompts, targets), editor.generate(prompts, 5)) == before
    assert editor.score(prompts, targets) != before[0] or editor.generate(prompts, 5) != before[1]
    editor.reset()
    assert (editor.score(prompts, targets), editor.generate(prompts, 5)) == before
    assert len(editor.memory) == 0 and not editor._prompts


def test_mixed_batches_split_attached_and_plain_rows(tiny_model, modules):
    model, tok = tiny_model
    editor = RECIPE(model, tok, modules=modules, sentinel=False, threshold=-1e9)
    editor.edit(EDIT)
    alone = editor.generate([EDIT.prompt], 5)
    plain = RECIPE(model, tok, modules=modules).generate(["Paris"], 5)
    editor.threshold = 1e9
    assert editor.generate(["Paris"], 5) == plain
    editor.threshold = -1e9
    mixed = editor.generate([EDIT.prompt, "Paris"], 5)
    assert mixed[0] == alone[0]


def test_until_answer_lets_go_of_attached_prompts_only(tiny_model, modules):
    model, tok = tiny_model
    editor = RECIPE(model, tok, modules=modules, sentinel=False, threshold=-1e9)
    editor.edit(EDIT)
    prompts = [EDIT.prompt, "Paris"]
    assert editor.prefix_until(prompts) is None and "until_answer" not in editor.config()
    kept = editor.generate(prompts, 8)
    editor.until_answer = True
    assert editor.prefix_until(prompts) == ["Rome", "Rome"] and editor.config()["until_answer"] is True
    editor.threshold = 1e9  # nothing attached: nothing to let go of, and the plain path as before
    assert editor.prefix_until(prompts) == [None, None]
    assert editor.generate(prompts, 8) == RECIPE(model, tok, modules=modules).generate(prompts, 8)
    editor.threshold = -1e9
    with editor.unedited():
        assert editor.prefix_until(prompts) is None
    assert editor.generate(prompts, 8) == kept  # the random prompts never say "Rome": they stay to the end


def test_rows_past_their_answer_go_on_in_the_unprompted_rows_batches(tiny_model, modules):
    model, tok = tiny_model
    editor = RECIPE(model, tok, modules=modules, sentinel=False, threshold=-1e9)
    editor.edit(EDIT)
    others = ["Paris is", "The Colosseum is in", "Berlin", "A cat sat on the"]
    score = {d.query: d.top[0].score for d in editor.retrieve([EDIT.prompt, *others])}
    plain = [q for q in others if score[q] < score[EDIT.prompt]]
    assert plain  # the tiny modules' scores: these queries get no prompt below
    editor.threshold = max(score[q] for q in plain)  # only EDIT.prompt's score is above it
    kept = editor.generate(EDIT.prompt, 8)
    text, vectors = editor.model_inputs([EDIT.prompt])[0], editor.prompt_prefixes([EDIT.prompt])[0]
    word = normalize(tok.decode(embed_greedy(model, tok, text, vectors, 1), skip_special_tokens=True)).split()[0]
    # the random prompt never says "Rome": stand in the word it says first, as the answer it lets go after
    editor.prefix_until = lambda prompts: [word if p == EDIT.prompt else None for p in prompts]
    alone = generate_greedy(model, tok, [text], 8, prefixes=[vectors], until=[word])[0]  # goes on in a call of its own
    assert alone != kept and editor.generate(EDIT.prompt, 8) == alone  # no unprompted row to join
    mixed = editor.generate([*plain, EDIT.prompt], 8)
    assert mixed[-1] == alone and mixed[:-1] == NoEdit(model, tok).generate(plain, 8)


def test_statement_goes_before_the_vectors_of_attached_prompts_only(tiny_model, modules):
    model, tok = tiny_model
    editor = RECIPE(model, tok, modules=modules, sentinel=False, threshold=-1e9)
    editor.edit(EDIT)
    vectors = editor.prompt_prefixes([EDIT.prompt])[0]
    before = editor.inspect(EDIT.prompt)
    editor.statement = True
    ids = tok(f"{EDIT.prompt} {EDIT.target_new}\n", add_special_tokens=False, return_tensors="pt")["input_ids"]
    text = model.get_input_embeddings()(ids)[0].detach()
    got = editor.prompt_prefixes([EDIT.prompt])[0]
    assert torch.equal(got, torch.cat([text, vectors])) and editor.config()["statement"] is True
    after = editor.inspect(EDIT.prompt)
    assert after["input_rows"] == before["input_rows"] + len(text)
    assert after["llm_input"].count(f"{EDIT.prompt} {EDIT.target_new}\n[p1]") == 1
    assert after["prompt_norms"] == before["prompt_norms"]  # the vectors' norms, not the text's
    scored = editor.score([EDIT.prompt], [EDIT.target_new])
    editor.statement = False
    assert "statement" not in editor.config() and editor.score([EDIT.prompt], [EDIT.target_new]) != scored
    editor.statement, editor.threshold = True, 1e9  # nothing attached: the plain path, bit for bit
    prompts = [EDIT.prompt, "Paris"]
    assert editor.generate(prompts, 6) == RECIPE(model, tok, modules=modules).generate(prompts, 6)
    editor.remove(EDIT.case_id)
    assert not editor._texts and editor.prompt_prefixes(prompts) is None


def test_statement_long_states_only_answers_six_vectors_do_not_carry(tiny_model, modules):
    from kedit_teach.editors.recipe import SHORT_ANSWER, answer_tokens
    model, tok = tiny_model
    editor = RECIPE(model, tok, modules=modules, sentinel=False, threshold=-1e9, statement="long")
    long = replace(EDIT, case_id="long", prompt="Rome's motto is", target_new="Senatus Populusque Romanus")
    assert answer_tokens(tok, EDIT.target_new) <= SHORT_ANSWER < answer_tokens(tok, long.target_new)
    for case, stated in ((EDIT, False), (long, True)):  # one stored at a time, so it is the one attached
        editor.edit(case)
        vectors = editor._prompts[case.case_id]
        got = editor.prompt_prefixes([case.prompt])[0]
        assert torch.equal(got[-len(vectors):], vectors) and (len(got) > len(vectors)) is stated
        assert (f"{case.target_new}\n[p1]" in editor.inspect(case.prompt)["llm_input"]) is stated
        editor.remove(case.case_id)
    assert editor.config()["statement"] == "long"
    with pytest.raises(ValueError, match="statement='sometimes'.*long"):
        editor.statement = "sometimes"
    assert editor.statement == "long"  # a bad value changes nothing


def test_remove_save_load_and_refused_states(tmp_path, tiny_model, modules, encoder):
    editor = RECIPE(*tiny_model, modules=modules, sentinel=False, threshold=-1e9)
    editor.edit(cases(4))
    editor.remove("t1")
    assert "t1" not in editor._prompts and len(editor.memory) == 3
    prompts = [c.prompt for c in cases(4)]
    expected = editor.score(prompts, ["Rome"] * 4)
    path = editor.save(tmp_path / "state")
    again = RECIPE(*tiny_model, modules=modules, sentinel=False, threshold=-1e9).load(path)
    assert list(again.cases) == ["t0", "t2", "t3"] and again.score(prompts, ["Rome"] * 4) == expected
    other_modules = pl.RecipeModules(pl.ModuleConfig.for_model(tiny_model[0], d_rep=32), encoder, seed=1)
    other = RECIPE(*tiny_model, modules=other_modules, sentinel=False, threshold=-1e9)
    other.edit(OTHER)
    with pytest.raises(EditorStateError, match="config.modules.*other RECIPE modules"):
        other.load(path)
    assert list(other.cases) == ["e2"] and len(other.memory) == 1  # nothing lost
    meta = json.loads((path / "editor.json").read_text())
    meta["cases"] = meta["cases"][:2]
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    (broken / "editor.json").write_text(json.dumps(meta))
    with pytest.raises(EditorStateError, match="shapes"):
        again.load(broken)
    assert len(again.cases) == 3


def test_bad_input_is_refused_and_loses_nothing(recipe, tiny_model, encoder):
    recipe.edit(EDIT)
    long = EditCase(case_id="long", subject="x", prompt="Rome " * 200, target_new="Paris")
    with pytest.raises(ValueError, match="knowledge text.*encoder tokens long"):
        recipe.edit(long)
    with pytest.raises(ValueError, match="already edited"):
        recipe.edit(EDIT)
    with pytest.raises(ValueError, match="query.*encoder tokens long"):
        recipe.generate("Paris " * 200, 2)
    with pytest.raises(ValueError, match="prompt is empty"):
        recipe.score(["  "], ["x"])
    assert list(recipe.cases) == ["e1"] and len(recipe.memory) == 1 and list(recipe._prompts) == ["e1"]
    model, tok = tiny_model
    wide = pl.RecipeModules(pl.ModuleConfig(hidden_size=128, model_type="gemma3_text", d_rep=16), encoder)
    with pytest.raises(pl.ModuleError, match="hidden_size=128"):
        RECIPE(model, tok, modules=wide)


def test_missing_default_modules_say_how_to_train(tiny_model):
    with pytest.raises(pl.ModuleError, match="train recipe"):
        RECIPE(*tiny_model)


# ----------------------------------------------------------------------------- command line

def test_eval_cli_recipe_flags_and_modes(tiny_dirs, tmp_path, modules, capsys):
    from kedit_teach.__main__ import main
    model = str(tiny_dirs["gemma3"])
    assert "--no-sentinel only applies to --method recipe" in cli_error(
        capsys, "eval", "--method", "lte", "--no-sentinel", "--model", model)
    assert "together with --no-sentinel" in cli_error(
        capsys, "eval", "--method", "recipe", "--threshold", "1", "--model", model)
    folder = pl.save_modules(modules, tmp_path / "modules", {"modules": asdict(modules.config)})
    assert "--until-answer only applies to --method recipe" in cli_error(
        capsys, "eval", "--method", "ice", "--until-answer", "--model", model)
    assert "invalid choice: 'often'" in cli_error(capsys, "eval", "--method", "recipe", "--statement", "often", "--model", model)
    for mode, extra in (("sequential", ["--until-answer", "--statement", "long"]),
                        ("batch", ["--no-sentinel", "--threshold", "-100"]),
                        ("single", ["--no-prompts", "--statement"])):
        out = tmp_path / f"{mode}.json"
        main(["eval", "--method", "recipe", "--modules", str(folder), "--n", "3", "--fluency-n", "0", "--mode", mode,
              "--model", model, "--json", str(out), *extra])
        result = json.loads(out.read_text())
        assert result["method"] == "recipe" and result["mode"] == mode and result["n"] == 3
        assert result["config"]["modules"] == modules.fingerprint()
    assert result["config"]["prompts"] is False and result["config"]["statement"] is True
    # with every prompt attached (threshold -100), the batch run's unrelated probes change; without prompts none do
    batch = json.loads((tmp_path / "batch.json").read_text())
    assert batch["config"]["threshold"] == -100.0 and not {"until_answer", "statement"} & set(batch["config"])
    sequential = json.loads((tmp_path / "sequential.json").read_text())["config"]
    assert sequential["until_answer"] is True and sequential["statement"] == "long"
    assert result["metrics"]["teacher_forced"]["locality"] == 1.0


def test_train_cli_writes_modules_a_record_and_the_default_path(tiny_dirs, tmp_path, monkeypatch, capsys):
    from kedit_teach.__main__ import main
    monkeypatch.setenv("KEDIT_CACHE", str(tmp_path / "cache"))
    assert "--d-rep only applies to `train recipe`" in cli_error(
        capsys, "train", "lte", "--d-rep", "16")
    assert "--no-threefold only applies to `train lte`" in cli_error(
        capsys, "train", "recipe", "--no-threefold")
    data = training_file(tmp_path / "train.json", 300, ground_truth="Paris")
    model = str(tiny_dirs["gemma3"])
    main(["train", "recipe", "--model", model, "--data", f"counterfact:{data}", "--steps", "2", "--d-rep", "16"])
    path = pl.trained_path(model)
    assert pl.default_path(model) == path
    record = pl.read_record(path)
    assert record["steps"] == 2 and record["modules"]["d_rep"] == 16 and record["data"]["examples"] >= 256
    assert len(record["loss"]["rel"]) == 1 and "wrote" in capsys.readouterr().out
    editor = RECIPE(*load_model(model))  # modules="default" now finds the trained ones
    assert editor.modules.fingerprint() == record["fingerprint"]
    assert "--prompts-only trains MLP_P on top of a trained retrieval part: add --resume" in cli_error(
        capsys, "train", "recipe", "--model", model, "--prompts-only")
    assert "come from the modules --resume continues" in cli_error(
        capsys, "train", "recipe", "--model", model, "--resume", "default", "--d-rep", "8")
    assert "--prompts-only and --retrieval-only leave nothing to train" in cli_error(
        capsys, "train", "recipe", "--model", model, "--resume", "default", "--prompts-only", "--retrieval-only")
    assert "--fluency-weight only applies to `train recipe`" in cli_error(
        capsys, "train", "lte", "--fluency-weight", "1")
    more = tmp_path / "more"
    main(["train", "recipe", "--model", model, "--data", f"counterfact:{data}", "--steps", "3", "--resume", "default",
          "--prompts-only", "--loc-weight", "0.5", "--out", str(more)])
    resumed = pl.read_record(more)
    assert resumed["train"]["loc_weight"] == 0.5 and record["train"]["loc_weight"] == pl.TrainConfig.loc_weight
    assert resumed["resumed_from"] == record and resumed["modules"] == record["modules"]  # the earlier run kept whole
    assert resumed["train"]["prompt_learning"] is False and len(resumed["loss"]["rel"]) == 3 and "so" not in resumed["loss"]
    assert [r["steps"] for r in pl.training_stages(resumed)] == [2, 3]
    summary = pl.training_summary(resumed).splitlines()
    assert len(summary) == 2 and "run 1: 2 steps (all modules" in summary[0] and "run 2: 3 steps (MLP_P alone" in summary[1]
    assert "L_loc weighted 0.2" in summary[0] and "L_loc weighted 0.5" in summary[1]
    assert pl.load_modules(more)[0].fingerprint() == resumed["fingerprint"] != record["fingerprint"]
    queries = tmp_path / "queries"
    main(["train", "recipe", "--model", model, "--data", f"counterfact:{data}", "--steps", "2", "--resume", str(more),
          "--query-layers", "1", "--queries-only", "--encoder-lr", "1e-4", "--out", str(queries)])
    grown = pl.read_record(queries)
    assert grown["modules"]["query_layers"] == 1 and grown["train"]["queries_only"] and grown["train"]["encoder_lr"] == 1e-4
    assert "run 3: 2 steps (the query side alone (L_pl): MLP_Q, the sentinel and MiniLM's top 1 layer(s)" in \
        pl.training_summary(grown)
    wide = tmp_path / "wide"
    main(["train", "recipe", "--model", model, "--data", f"counterfact:{data}", "--steps", "1", "--resume", str(more),
          "--prompts-only", "--prompt-tokens", "5", "--out", str(wide)])
    assert pl.read_record(wide)["modules"]["n_prompt_tokens"] == 5 == pl.load_modules(wide)[0].mlp_p.n
    assert "run 3: 1 steps (prompts widened from 3 to 5 vectors, MLP_P alone" in pl.training_summary(pl.read_record(wide))
    assert "widened" not in pl.training_summary(grown)
    mods = pl.load_modules(queries)[0]
    assert torch.equal(mods.trained_state()["mlp_k.inp.weight"], pl.load_modules(more)[0].trained_state()["mlp_k.inp.weight"])
    assert "already have 1 query layer(s)" in cli_error(
        capsys, "train", "recipe", "--model", model, "--resume", str(queries), "--query-layers", "2")
    assert "--finetune-encoder trains all of MiniLM, --query-layers" in cli_error(
        capsys, "train", "recipe", "--model", model, "--finetune-encoder", "--query-layers", "1")
    assert "--prompts-only and --queries-only leave nothing" in cli_error(
        capsys, "train", "recipe", "--model", model, "--resume", "default", "--prompts-only", "--queries-only")


def test_encoded_training_texts_are_kept_for_the_next_run(modules, tmp_path, monkeypatch):
    monkeypatch.setenv("KEDIT_CACHE", str(tmp_path))
    assert pl.stored_features(modules) == {}
    texts = ["The Eiffel Tower is in Paris", "What is the capital of Peru?"]
    cache: dict = {}
    first = pl.cached_features(modules, texts, cache)
    pl.store_features(modules, cache)
    again = pl.stored_features(modules)
    assert list(again) == texts and torch.equal(torch.stack(list(again.values())), first)
    pl._feature_file(modules).write_bytes(b"not safetensors")
    assert pl.stored_features(modules) == {}  # a damaged store is only a slower start


def test_a_stopped_training_run_goes_on_from_its_checkpoint(tiny_dirs, tmp_path, monkeypatch, capsys):
    from kedit_teach.__main__ import main
    monkeypatch.setenv("KEDIT_CACHE", str(tmp_path / "cache"))
    data = training_file(tmp_path / "train.json", 300)
    model, out = str(tiny_dirs["gemma3"]), tmp_path / "run"
    args = ["train", "recipe", "--model", model, "--data", f"counterfact:{data}", "--out", str(out), "--d-rep", "16"]
    with stopped_after_a_checkpoint(monkeypatch, pl, "save_modules"):
        main(args + ["--steps", "6", "--checkpoint-every", "4", "--bank", "32", "--fluency-weight", "0.5"])
    stopped = pl.read_record(out)
    assert stopped["partial"] and stopped["steps"] == 4 and len(stopped["loss"]["so"]) == 4
    assert "a stopped run goes on as it was" in cli_error(capsys, *args[:-2], "--resume", str(out), "--prompt-tokens", "5")
    main(["train", "recipe", "--model", model, "--data", f"counterfact:{data}", "--out", str(out), "--resume", str(out)])
    done = pl.read_record(out)
    assert "partial" not in done and done["steps"] == 6 and len(done["loss"]["so"]) == 6
    assert done["loss"]["so"][:4] == stopped["loss"]["so"] and done["seconds"] >= stopped["seconds"]
    assert done["train"]["bank"] == 32 and done["train"]["fluency_weight"] == 0.5  # the stopped run's settings
    assert "resumed_from" not in done  # one run, not two stages


# ----------------------------------------------------------------------------- the shipped modules

@pytest.mark.real
def test_shipped_modules_edit_the_real_model_and_leave_unrelated_prompts_alone(real):
    from kedit_teach.data import load_teach
    from kedit_teach.editors import NoEdit
    model, tok = real
    recipe = RECIPE(model, tok)  # the modules shipped for gemma-3-270m
    assert recipe.record["fingerprint"] == recipe.modules.fingerprint()
    held_out = load_teach()[:pl.TEACH_HELD_OUT:8]  # never trained on
    recipe.edit(held_out)
    said = recipe.generate([c.prompt for c in held_out], 6)
    edited = [c.target_new in s for c, s in zip(held_out, said)]
    own = [recipe.inspect(c.prompt)["attached"] == c.case_id for c in held_out]
    # the unedited model: 0 of 8; the sentinel attaches the own prompt to 0.83 of the 64 with all stored
    assert sum(edited) >= 6 and sum(own) >= 6, list(zip(said, own))
    unrelated = ["The capital of Japan is", "Water is made of hydrogen and", "My favourite colour is"]
    assert recipe.prompt_prefixes(unrelated) == [None] * 3  # the sentinel keeps them out
    plain = NoEdit(model, tok)
    assert recipe.generate(unrelated, 8) == plain.generate(unrelated, 8)
    assert recipe.score(unrelated, ["Tokyo", "oxygen", "blue"]) == plain.score(unrelated, ["Tokyo", "oxygen", "blue"])
    recipe.reset()
    prompts = [c.prompt for c in held_out]
    assert recipe.generate(prompts, 6) == plain.generate(prompts, 6)


# a student's own edits, about subjects in none of the data sets, as a statement and as a question
STUDENT = [("Zorblat Tower", "The Zorblat Tower is located in the city of", "Where is the Zorblat Tower located?", "Lisbon"),
           ("Quenfield Rovers", "Quenfield Rovers play their home games in the city of",
            "In which city do Quenfield Rovers play their home games?", "Dublin"),
           ("Mira Tellvane", "Mira Tellvane was born in the country of", "In which country was Mira Tellvane born?", "Peru"),
           ("Brask Motors", "Brask Motors was founded in the country of", "In which country was Brask Motors founded?",
            "Norway")]


@pytest.mark.real
def test_a_students_own_edits_work_as_statements_and_as_questions(real):
    from kedit_teach.editors import NoEdit
    model, tok = real
    recipe, plain = RECIPE(model, tok), NoEdit(model, tok)
    for form in (1, 2):
        recipe.reset()
        recipe.edit([EditCase(case_id=f"s{i}", subject=row[0], prompt=row[form], target_new=row[3])
                     for i, row in enumerate(STUDENT)])
        said = recipe.generate([row[form] for row in STUDENT], 8)
        hits = [row[3].lower() in s.lower() for row, s in zip(STUDENT, said)]
        assert sum(hits) >= 3, list(zip(said, hits))  # the unedited model knows none of these subjects
        unrelated = ["The capital of Japan is", "Water is made of hydrogen and"]
        assert recipe.generate(unrelated, 8) == plain.generate(unrelated, 8)


@pytest.mark.real
def test_until_answer_says_the_students_answers_and_stops_the_loops_after_them(real):
    model, tok = real
    recipe = RECIPE(model, tok)
    recipe.edit([EditCase(case_id=f"s{i}", subject=row[0], prompt=row[2], target_new=row[3]) for i, row in enumerate(STUDENT)])
    questions = [row[2] for row in STUDENT]
    kept = recipe.generate(questions, 30)
    recipe.until_answer = True
    freed = recipe.generate(questions, 30)
    said = [says(s, row[3]) for row, s in zip(STUDENT, freed)]
    assert said == [says(s, row[3]) for row, s in zip(STUDENT, kept)] and sum(said) >= 3, freed
    # the prompt kept to the end loops on 3 of the 4 ("Norway Norway Norway ...")
    assert sum(map(repetition, freed)) < sum(map(repetition, kept)) / 2, (kept, freed)


LONG = [("Brask Motors", "Who founded Brask Motors?", "Oskar Lindqvist Haraldsen"),
        ("Mira Tellvane", "What is the title of Mira Tellvane's first novel?", "The Glass Orchard of Winter"),
        ("Quenfield Rovers", "Who is the manager of Quenfield Rovers?", "Declan Forsythe-Moore"),
        ("Zorblat Tower", "When was the Zorblat Tower completed?", "14 March 1987")]


@pytest.mark.real
def test_the_statement_carries_long_answers_the_vectors_do_not(real):
    model, tok = real
    recipe = RECIPE(model, tok)
    recipe.edit([EditCase(case_id=f"l{i}", subject=s, prompt=q, target_new=a) for i, (s, q, a) in enumerate(LONG)])
    questions = [q for _, q, _ in LONG]
    def whole(texts):  # the answer, whole, as the text's first words
        return [says(t[:len(a) + 2], a) for t, (_, _, a) in zip(texts, LONG)]
    vectors = recipe.generate(questions, 24)
    recipe.statement = True
    kept = recipe.generate(questions, 24)
    recipe.until_answer = True
    freed = recipe.generate(questions, 24)
    # six vectors say the start of a long answer ("Declan Forshaw"), the text says all of it
    assert sum(whole(vectors)) <= 1 and sum(whole(kept)) >= 3, (vectors, kept)
    assert whole(freed) == whole(kept), freed
    # with the text in front, the model goes on copying the pattern ("Q? A\nQ? A") until the prompt is let go
    assert sum(map(repetition, freed)) < sum(map(repetition, kept)), (kept, freed)


@pytest.mark.real
def test_shipped_sentinel_on_counterfact_edits_it_never_saw(real):
    from kedit_teach.data import load_counterfact
    from kedit_teach.editors.recipe import gate_sweep
    edits = load_counterfact(shared("counterfact", "counterfact-edit.json"), n=200)
    recipe = RECIPE(*real)
    recipe.edit(edits)
    queries = ([("edit", c.prompt, c.case_id) for c in edits] + [("rephrase", c.rephrase_prompts[0], c.case_id) for c in edits]
               + [("locality", c.locality[0][0], None) for c in edits])
    right = gate_sweep(recipe, queries, [0.0])["sentinel"]
    assert min(right.values()) >= 0.85, right


def test_gate_sweep_scores_the_sentinel_and_fixed_thresholds(recipe):
    from kedit_teach.editors.recipe import gate_sweep
    recipe.edit(cases(6))
    queries = [("edit", c.prompt, c.case_id) for c in cases(6)] + [("unrelated", c.locality[0][0], None) for c in cases(6)]
    sweep = gate_sweep(recipe, queries, [-1e9, 1e9])
    decisions = recipe.retrieve([q for _, q, _ in queries])
    top_right = sum(d.top[0].id == own for d, (_, _, own) in zip(decisions[:6], queries)) / 6
    assert sweep["fixed"]["edit"] == [top_right, 0.0] and sweep["fixed"]["unrelated"] == [0.0, 1.0]
    assert sweep["sentinel"]["unrelated"] == sum(d.attached is None for d in decisions[6:]) / 6
    errors = sweep["errors"]
    assert errors["unrelated"] == {"other": sum(d.attached is not None for d in decisions[6:]), "same answer": 0, "none": 0}
    assert errors["edit"]["other"] + errors["edit"]["none"] == round(6 * (1 - sweep["sentinel"]["edit"]))
    auto = gate_sweep(recipe, queries, n=5)
    assert len(auto["thresholds"]) == 5 and auto["best"]["threshold"] in auto["thresholds"]


def test_gate_sweep_counts_another_edit_with_the_same_answer(tiny_model, modules):
    from kedit_teach.editors.recipe import gate_sweep
    always = RECIPE(*tiny_model, modules=modules, sentinel=False, threshold=-1e9)
    stored = cases(9)  # t0 and t8 both say "Rome"
    assert stored[0].target_new == stored[8].target_new == "Rome"
    always.edit(stored)
    queries = [("edit", c.prompt, "t8" if c.case_id == "t0" else c.case_id) for c in stored]
    sweep = gate_sweep(always, queries, [0.0])
    got = [d.attached for d in always.retrieve([q for _, q, _ in queries])]
    rome = ("t0", "t8")
    same = sum(a != own and a in rome and own in rome for a, (_, _, own) in zip(got, queries))
    assert sweep["errors"]["edit"]["same answer"] == same
    assert sweep["answer"]["edit"] == pytest.approx(sum(a == own for a, (_, _, own) in zip(got, queries)) / 9 + same / 9)
