"""Metrics: batched teacher forcing, generation match, fluency."""
from __future__ import annotations

import pytest

import torch

from kedit_teach.metrics import (TokenScore, generate_greedy, generation_match, next_token_probs, ngram_entropy,
                                 normalize, pack_targets, plural, repetition, said_after, same_answer, says, target_budget,
                                 teacher_forced, word_recall)

PROMPTS = ["The Eiffel Tower is located in the city of", "The capital of Japan is",
           "Michel Rocard is a native speaker of"]
TARGETS = ["Rome", "Paris France", "English"]


def test_token_score_accuracy_exact_and_agreement():
    s = TokenScore(target_ids=[5, 6, 7], pred_ids=[5, 9, 7])
    assert s.token_acc == pytest.approx(2 / 3) and s.exact == 0.0
    assert TokenScore([5, 6], [5, 6]).exact == 1.0
    assert s.agreement(TokenScore([1, 1, 1], [5, 9, 8])) == pytest.approx(2 / 3)


def test_pack_targets_points_at_the_positions_that_predict_each_target_token(gemma_tiny):
    _, tok = gemma_tiny
    batch = pack_targets(tok, PROMPTS, TARGETS)
    for r, (x, y) in enumerate(zip(PROMPTS, TARGETS)):
        full = tok(x + " " + y)["input_ids"]
        n_prompt = len(tok(x)["input_ids"])
        cols = batch.cols[batch.rows == r].tolist()
        assert cols == list(range(n_prompt - 1, len(full) - 1))
        # the token at col+1 of the full sequence is the gold target token
        assert [full[c + 1] for c in cols] == batch.target_ids[r]


def test_sliced_equals_unsliced_and_is_batch_invariant(tiny):
    model, tok = tiny
    a = teacher_forced(model, tok, PROMPTS, TARGETS, batch_size=16, sliced=True)
    b = teacher_forced(model, tok, PROMPTS, TARGETS, batch_size=16, sliced=False)
    c = teacher_forced(model, tok, PROMPTS, TARGETS, batch_size=1, sliced=True)
    assert [s.pred_ids for s in a] == [s.pred_ids for s in b] == [s.pred_ids for s in c]
    assert [s.target_ids for s in a] == [s.target_ids for s in c]


def test_teacher_forced_matches_per_position_argmax(gemma_tiny):
    import torch
    model, tok = gemma_tiny
    (score,) = teacher_forced(model, tok, PROMPTS[:1], TARGETS[:1])
    ids = tok(PROMPTS[0] + " " + TARGETS[0], return_tensors="pt")["input_ids"]
    n_prompt = len(tok(PROMPTS[0])["input_ids"])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    assert score.pred_ids == logits[n_prompt - 1:-1].argmax(-1).tolist()


def test_mismatched_lengths_raise(gemma_tiny):
    with pytest.raises(ValueError, match="3 prompts but 2 targets"):
        teacher_forced(*gemma_tiny, PROMPTS, TARGETS[:2])


def test_batched_generation_equals_one_at_a_time(tiny):
    model, tok = tiny
    budgets = target_budget(tok, PROMPTS, TARGETS)
    assert budgets == [len(pack_targets(tok, [x], [y]).target_ids[0]) + 5 for x, y in zip(PROMPTS, TARGETS)]
    batched = generate_greedy(model, tok, PROMPTS, budgets)
    single = [generate_greedy(model, tok, [p], b)[0] for p, b in zip(PROMPTS, budgets)]
    assert batched == single


def test_normalize_and_generation_match():
    assert normalize("  Rome,  ITALY!\n") == "rome italy"
    assert generation_match(" Rome, the eternal city", "Rome") == 1.0
    assert generation_match(" The city of Rome", "Rome") == 0.0  # must *start* with the target
    assert generation_match("Paris", "Rome") == 0.0
    assert generation_match("anything", "...") == 0.0  # an all-punctuation target never matches


def test_word_recall_is_the_in_order_share_of_the_targets_words():
    target = "He received education at University College, London, where"
    assert word_recall(" He was educated at University College London.", target) == pytest.approx(5 / 8)
    assert word_recall("where London College University at education received He", target) == pytest.approx(1 / 8)
    assert word_recall("x He y received z education at University College London where", target) == 1.0
    assert word_recall("", target) == 0.0 and word_recall("anything", "...") == 0.0


def test_says_whole_words_and_said_after_keeps_the_order():
    assert says("Madrid, Spain. Madrid is", "madrid") and says("in New  York.", "New York")
    assert not says("Romania", "Rome") and not says("anything", "") and not says("New Yorker", "New York")
    assert said_after("Rome, Italy. It stands in Paris", "Rome", "Paris")
    assert not said_after("Paris. Now Rome", "Rome", "Paris")  # the old answer came first
    assert not said_after("It stands in Paris", "Rome", "Paris")  # the new one never came
    assert said_after("Rome Rome Paris", "Rome", "Paris") and not said_after("Rome and Romeo", "Rome", "Romeo x")


def test_repetition_counts_3grams_said_before():
    assert repetition("Sydney, Australia. It is a city in the south") == 0.0
    assert repetition("a city and a city and a city") == pytest.approx(0.5)  # 6 3-grams, 3 distinct
    assert repetition("too short") == 0.0 and repetition("") == 0.0
    assert repetition("Sydney Sydney Sydney Sydney", n=1) == 0.75


def test_ngram_entropy_rewards_diverse_text():
    assert ngram_entropy("Rome Rome Rome Rome Rome Rome") == 0.0
    # 4 distinct bigrams and 3 distinct trigrams, uniform: (2/3*2 + 4/3*log2(3)) / 2
    import math
    assert ngram_entropy("a b c d e") == pytest.approx((2 / 3 * 2 + 4 / 3 * math.log2(3)) / 2)
    assert ngram_entropy("the cat sat on the mat and looked at the dog") > ngram_entropy("the cat the cat the cat")


def test_next_token_probs_are_the_full_softmax_and_greedy_takes_the_first(gemma_tiny):
    model, tok = gemma_tiny
    top = next_token_probs(model, tok, PROMPTS[0], k=5)
    probs = [p for _, p in top]
    assert len(top) == 5 and probs == sorted(probs, reverse=True) and sum(probs) < 1
    with torch.no_grad():
        logits = model(**tok(PROMPTS[0], return_tensors="pt")).logits[0, -1]
    ids = logits.topk(5).indices.tolist()
    assert [t for t, _ in top] == [tok.decode([i]) for i in ids]
    assert probs == pytest.approx(logits.softmax(-1)[ids].tolist(), abs=1e-6)
    first, = model.generate(**tok(PROMPTS[0], return_tensors="pt"), max_new_tokens=1, do_sample=False)[:, -1]
    assert first.item() == ids[0]


@pytest.mark.parametrize("answer, expected, same", [
    ("Tokyo. It is the largest", "Tokyo, and the capital of", True),  # ROME's and the unedited model's
    ("Tokyo", "Tokyo, and the capital of", True),
    ("Berlin\nThe Brandenburg", "Berlin, Germany", True),
    (" rome, Italy", "Rome", True),
    ("New York City", "New York", True),
    ("Rome, Italy", "Paris", False),
    ("Romeo and Juliet", "Rome", False),
    ("New Jersey", "New York", False),
    ("3.5 million people", "3.7 million", False),  # a decimal point is no clause boundary
    ("", "Paris", False),
    (", Paris", "Paris", True),
])
def test_same_answer_compares_the_first_phrase(answer, expected, same):
    assert same_answer(answer, expected) is same and same_answer(expected, answer) is same


def test_plural():
    assert [plural(n, "edit") for n in (0, 1, 2)] == ["0 edits", "1 edit", "2 edits"]
    assert plural(1, "entry", "entries") == "1 entry" and plural(3, "entry", "entries") == "3 entries"
