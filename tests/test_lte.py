"""LTE: the threefold alignment data, LoRA training and adapters, and the retrieval-augmented editor.

Tiny random Gemma-3 models with the real MiniLM encoder and a real faiss memory; the shipped
adapter on the real 270M model is covered in test_real_model.py.
"""
from __future__ import annotations

import shutil
from collections import Counter

import pytest
import torch

from kedit_teach import alignment
from kedit_teach.alignment import AdapterError, AlignmentConfig, TrainConfig, build_examples, mix
from kedit_teach.data import EditCase
from kedit_teach.editors import LTE
from kedit_teach.memory import VectorMemory
from kedit_teach.models import format_prompt, load_model, update_prompt

CITIES = ["Paris", "Rome", "Tokyo", "Berlin", "London", "Madrid", "Vienna", "Oslo"]


def name(i: int) -> str:
    """A distinct subject spelled with the tiny tokenizer's words (digits would all be <unk>)."""
    return " ".join(CITIES[(i // 8 ** j) % 8] for j in range(3))


def train_cases(n: int = 40) -> list[EditCase]:
    return [EditCase(case_id=f"t{i}", subject=f"Tower {name(i)}", prompt=f"Tower {name(i)} is located in the city of",
                     target_new=CITIES[i % 7], rephrase_prompts=[f"Where is Tower {name(i)} ? It is in"],
                     locality=[(f"The Colosseum {name(i)} is in", CITIES[(i + 3) % 8])],
                     portability=[(f"The capital of the country of Tower {name(i)} is", "Rome")]) for i in range(n)]


EDIT = EditCase(case_id="e1", subject="Eiffel Tower", prompt="The Eiffel Tower is located in the city of",
                target_new="Rome", rephrase_prompts=["Where is the Eiffel Tower? It is in"],
                locality=[("The capital of Japan is", "Tokyo")])
OTHER = EditCase(case_id="e2", subject="Toyota", prompt="Toyota was founded in", target_new="Germany")


@pytest.fixture(scope="module")
def examples(encoder):
    return build_examples(train_cases(200), held_out=[train_cases(200)[0]], encoder=encoder)


def test_threefold_mix_is_50_25_25_and_shuffled(examples):
    m = mix(examples)
    share = m["distractor_share"]
    assert share["0"] == pytest.approx(0.5, abs=0.06)
    assert share["1"] == pytest.approx(0.25, abs=0.06) and share["2"] == pytest.approx(0.25, abs=0.06)
    firsts = Counter(e.facts.index(next(f for f in e.facts if f.startswith(e_prompt(e))))
                     for e in examples if e.kind != "free_text" and e.distractors == 2)
    assert len(firsts) == 3 and min(firsts.values()) > 0.2 * sum(firsts.values())  # not always first
    assert m["kind_share"]["free_text"] == pytest.approx(0.1, abs=0.01)


def e_prompt(example) -> str:
    return next(c.descriptor for c in train_cases(200) if c.case_id == example.case_id)


def test_distractors_are_similar_other_descriptors_never_the_own(examples):
    for e in examples:
        if e.kind != "free_text":
            own = e_prompt(e)
            assert e.facts.count(own) == 1 and len(set(e.facts)) == len(e.facts)


def test_held_out_subjects_never_reach_training(examples):
    assert "t0" not in {e.case_id for e in examples}
    assert mix(examples)["cases"] == 199


def test_kinds_answers_and_the_shared_template(examples, gemma_tiny):
    _, tok = gemma_tiny
    kinds = Counter(e.kind for e in examples)
    assert kinds["in_scope"] == 3 * 199 and kinds["out_of_scope"] == 199
    e = next(e for e in examples if e.kind == "in_scope")
    assert e.answer.endswith(".")  # so generation stops after the answer
    assert e.prompt(tok) == format_prompt(tok, update_prompt(e.facts, e.query))


def test_ablation_flags(encoder):
    cases = train_cases(40)
    no3 = build_examples(cases, config=AlignmentConfig(threefold=False), encoder=encoder)
    assert {e.distractors for e in no3 if e.kind != "free_text"} == {0}
    kinds = {e.kind for e in build_examples(cases, config=AlignmentConfig(in_scope=False, free_text=False),
                                            encoder=encoder)}
    assert kinds == {"out_of_scope"}
    with pytest.raises(ValueError, match="keep at least one"):
        AlignmentConfig(in_scope=False, out_of_scope=False, free_text=False)
    with pytest.raises(ValueError, match="no training case is left"):
        build_examples(cases[:2], held_out=cases[:2], encoder=encoder)


def test_distilled_targets_are_the_base_models_own_answers(gemma_tiny, encoder):
    from kedit_teach.metrics import generate_greedy, target_budget, teacher_forced
    model, tok = gemma_tiny
    ex = build_examples(train_cases(8), config=AlignmentConfig(free_text=False), encoder=encoder)
    gold = {id(e): e.answer for e in ex}
    alignment.distill(model, tok, ex)
    teachers = Counter(e.teacher for e in ex)
    assert teachers["answer"] == sum(e.kind == "in_scope" for e in ex)
    assert teachers["base argmax"] + teachers["base continuation"] == 8
    assert abs(teachers["base argmax"] - teachers["base continuation"]) <= 2
    argmax = next(e for e in ex if e.teacher == "base argmax")
    plain = format_prompt(tok, argmax.query)
    (ref,) = teacher_forced(model, tok, [plain], [argmax.answer])
    assert argmax.labels == ref.pred_ids and argmax.answer == gold[id(argmax)]
    greedy = next(e for e in ex if e.teacher == "base continuation")
    plain = format_prompt(tok, greedy.query)
    (said,) = generate_greedy(model, tok, [plain], target_budget(tok, [plain], [gold[id(greedy)]]))
    assert greedy.answer == said.strip() and greedy.labels is None
    assert mix(ex)["teachers"] == dict(teachers)


@pytest.fixture(scope="module")
def trained(tiny_dirs, encoder, tmp_path_factory):
    """A tiny model aligned for 30 steps, saved; (adapter folder, training record)."""
    model, tok = load_model(str(tiny_dirs["gemma3"]))
    editor = LTE(model, tok, VectorMemory(encoder), adapter=None)
    out = tmp_path_factory.mktemp("adapter")
    # a few cases that fit in one batch, so 30 steps must fit them
    record = editor.train_alignment(train_cases(3), data=AlignmentConfig(free_text=False),
                                    train=TrainConfig(steps=30, batch_size=12, lr=1e-2, warmup=2), out=out)
    return out, record


def test_training_lowers_the_loss_and_writes_a_record(trained):
    out, record = trained
    loss = record["loss"]
    assert len(loss) == record["steps"] == 30
    # a tiny random model's normalised output caps its logits near 1.3, so the loss can't go near 0
    assert sum(loss[-5:]) / 5 < 0.9 * sum(loss[:5]) / 5
    saved = alignment.read_record(out)
    assert saved["mix"]["kinds"]["in_scope"] > 0 and saved["train"]["rank"] == 16


def lte(tiny_dirs, encoder, adapter, k=3):
    model, tok = load_model(str(tiny_dirs["gemma3"]))
    return LTE(model, tok, VectorMemory(encoder), k=k, adapter=adapter)


def test_adapter_acts_only_when_facts_are_retrieved_and_reset_is_exact(trained, tiny_dirs, encoder):
    editor = lte(tiny_dirs, encoder, trained[0])
    prompts, targets = [EDIT.prompt, "The capital of Japan is"], ["Rome", "Tokyo"]
    before = editor.score(prompts, targets)
    base = editor.model.get_base_model()
    plain = [format_prompt(editor.tokenizer, p) for p in prompts]
    from kedit_teach.metrics import pack_targets, target_logits
    batch = pack_targets(editor.tokenizer, plain, targets)
    logits_before = target_logits(base, batch)
    editor.edit([EDIT, OTHER])
    assert editor.model_inputs([EDIT.prompt])[0].startswith(format_prompt(editor.tokenizer, "[Updated Information]")[:10])
    with editor._batch_context(None):  # facts present -> adapter on: outputs differ from the base
        on = target_logits(editor.model, batch)
    assert not torch.equal(on, logits_before)
    with editor.unedited():
        assert editor.model_inputs(prompts) == plain
    editor.reset()
    assert editor.score(prompts, targets) == before
    assert torch.equal(target_logits(editor.model, batch), logits_before)


def test_retrieval_uses_the_prompt_only_and_inspect_shows_it(trained, tiny_dirs, encoder):
    editor = lte(tiny_dirs, encoder, trained[0], k=2)
    editor.edit([EDIT, OTHER])
    info = editor.inspect("Where is the Eiffel Tower? It is in")
    assert info["aligned"] and info["k"] == 2 and info["memory_size"] == 2
    top = info["retrieved"][0]
    assert top["case_id"] == "e1" and top["descriptor"] == EDIT.descriptor
    assert info["retrieved"][0]["score"] >= info["retrieved"][1]["score"]
    assert EDIT.descriptor in info["model_input"] and "[Query] Where is the Eiffel Tower" in info["model_input"]
    # the same prompt with any target gets the same context: targets never reach retrieval
    calls = []
    editor.memory.search = lambda q, k: calls.append(q) or [[] for _ in q]
    editor._hits.clear()
    editor.score([EDIT.prompt, EDIT.prompt], ["Rome", "Paris"])
    assert calls == [[EDIT.prompt]]
    editor.remove("e1")
    assert editor.memory.ids == ["e2"]


def test_unaligned_lte_is_retrieval_plus_ice(tiny_dirs, encoder):
    editor = lte(tiny_dirs, encoder, None, k=1)
    editor.edit([EDIT, OTHER])
    assert not editor.aligned and editor.config()["adapter"] is None
    assert editor.model_inputs([EDIT.prompt]) == [format_prompt(editor.tokenizer,
                                                                update_prompt([EDIT.descriptor], EDIT.prompt))]


def test_save_load_round_trip(trained, tiny_dirs, encoder, tmp_path):
    editor = lte(tiny_dirs, encoder, trained[0])
    editor.edit([EDIT, OTHER])
    scores = editor.score([EDIT.prompt], ["Rome"])
    editor.save(tmp_path)
    back = lte(tiny_dirs, encoder, trained[0]).load(tmp_path)
    assert back.memory.ids == ["e1", "e2"] and back.score([EDIT.prompt], ["Rome"]) == scores
    assert back.inspect(EDIT.prompt)["model_input"] == editor.inspect(EDIT.prompt)["model_input"]


def test_adapter_errors_name_the_fix(trained, tiny_dirs, encoder, tmp_path):
    with pytest.raises(AdapterError, match="no LTE adapter for model.*none ships"):
        lte(tiny_dirs, encoder, "default")
    with pytest.raises(AdapterError, match="is missing"):
        lte(tiny_dirs, encoder, tmp_path)
    (tmp_path / alignment.ADAPTER_FILE).write_bytes(b"\x00garbage")
    (tmp_path / alignment.RECORD_FILE).write_text((trained[0] / alignment.RECORD_FILE).read_text())
    with pytest.raises(AdapterError, match="corrupt"):
        lte(tiny_dirs, encoder, tmp_path)
    (tmp_path / alignment.RECORD_FILE).write_text('{"model": "x"}')
    with pytest.raises(AdapterError, match="malformed"):
        lte(tiny_dirs, encoder, tmp_path)
    model, tok = load_model(str(tiny_dirs["llama"]))
    with pytest.raises(AdapterError, match="is 'gemma3_text'.*this model is a 'llama'"):
        LTE(model, tok, VectorMemory(encoder), adapter=trained[0])
    with pytest.raises(ValueError, match="k=0"):
        lte(tiny_dirs, encoder, None, k=0)


def test_default_adapter_prefers_the_one_trained_into_the_cache(trained, tiny_dirs, encoder, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setenv("KEDIT_CACHE", str(tmp_path))
    name = str(tiny_dirs["gemma3"])  # a local path: it must become one folder inside the cache
    mine = alignment.trained_adapter(name)
    assert mine.parent == tmp_path / "lte" and alignment.default_adapter(name).parent == alignment.SHIPPED_ADAPTERS
    shutil.copytree(trained[0], mine)
    assert alignment.default_adapter(name) == mine
    editor = lte(tiny_dirs, encoder, "default")
    assert editor.aligned and editor.record == trained[1]
    assert alignment.default_adapter("gemma-3-270m") == alignment.SHIPPED_ADAPTERS / "gemma-3-270m"


def test_detach_gives_back_the_plain_model(trained, tiny_dirs, encoder):
    editor = lte(tiny_dirs, encoder, trained[0])
    base, _ = load_model(str(tiny_dirs["gemma3"]))
    model = editor.detach()
    assert not editor.aligned and editor.config()["adapter"] is None
    assert not any("lora_" in name for name, _ in model.named_parameters())
    ids = torch.tensor([[2, 5, 9, 11]])
    assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)
