"""Causal tracing: the facts of the procedure that hold on any model, then the real 270M model."""
from __future__ import annotations

import pytest
import torch

from kedit_teach.models import format_prompt
from kedit_teach.tracing import KINDS, subject_span, trace, window_size

PROMPT, SUBJECT = "The Eiffel Tower is located in the city of", "Eiffel Tower"


def test_subject_span_covers_exactly_the_subject(tiny):
    model, tok = tiny
    text = format_prompt(tok, PROMPT)
    start, end = subject_span(tok, text, SUBJECT)
    ids = tok(text)["input_ids"]
    assert tok.decode(ids[start:end]).strip() == SUBJECT
    assert start >= 1  # <bos> is never part of the subject


@pytest.mark.parametrize("subject, match", [("Colosseum", "does not occur"), ("eiffel tower", "does not occur"),
                                            ("  ", "subject is empty")])
def test_a_subject_not_in_the_prompt_is_refused(gemma_tiny, subject, match):
    model, tok = gemma_tiny
    with pytest.raises(ValueError, match=match):
        trace(model, tok, PROMPT, subject, progress=False)


def test_window_keeps_the_papers_share_of_depth():
    assert window_size(48) == 10 and window_size(18) == 4 and window_size(2) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_restoring_what_noise_never_reached_changes_nothing(tiny, kind):
    """States of tokens before the subject are the same in the clean and corrupted runs, so
    restoring them gives p_corrupt; restoring the last layer's output at the last token gives the
    clean run's logits, so p_clean."""
    model, tok = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = trace(model, tok, PROMPT, SUBJECT, target="Paris", kind=kind, samples=3, progress=False)
    start, end = t.subject_range
    assert t.scores.shape == (len(t.tokens), model.config.num_hidden_layers)
    assert t.scores[:start] == pytest.approx(t.p_corrupt, rel=2e-2, abs=1e-6)
    if kind == "hidden":
        assert t.scores[-1, -1] == pytest.approx(t.p_clean, rel=2e-2, abs=1e-6)
    assert t.p_clean != pytest.approx(t.p_corrupt, rel=1e-3)  # the noise did something
    assert all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_no_noise_means_nothing_to_restore(gemma_tiny):
    model, tok = gemma_tiny
    t = trace(model, tok, PROMPT, SUBJECT, noise=0.0, samples=2, progress=False)
    assert t.p_corrupt == pytest.approx(t.p_clean, rel=1e-3)
    assert t.scores == pytest.approx(t.p_clean, rel=1e-3)


def test_the_same_seed_gives_the_same_trace(gemma_tiny):
    model, tok = gemma_tiny
    a, b = (trace(model, tok, PROMPT, SUBJECT, samples=2, progress=False) for _ in range(2))
    assert (a.scores == b.scores).all() and a.target == b.target
    c = trace(model, tok, PROMPT, SUBJECT, samples=2, seed=2, progress=False)
    assert not (a.scores == c.scores).all()


@pytest.mark.real
def test_the_real_model_recovers_the_fact_at_the_subject(real):
    """On Gemma-3-270M " Paris" is carried by a subject token in the lower layers (the early site;
    here " Eiffel", not the last subject token " Tower") and by the last token only in the upper
    layers (the late site); tokens before the subject carry nothing."""
    model, tok = real
    t = trace(model, tok, PROMPT, SUBJECT, target="Paris", samples=5, progress=False)
    assert t.p_clean > 0.3 and t.p_corrupt < 0.1 * t.p_clean
    gap, half = t.p_clean - t.p_corrupt, t.scores.shape[1] // 2
    start, end = t.subject_range
    assert t.scores[start:end, :half].max() > t.p_corrupt + 0.5 * gap
    assert t.scores[-1, :half].max() < t.p_corrupt + 0.2 * gap < t.p_corrupt + 0.8 * gap < t.scores[-1, half:].max()
    assert t.scores[:start].max() < t.p_corrupt + 0.05 * gap
