"""The exercise checks: the reference passes, and typical wrong solutions fail with their own hint.

The wrong solutions here are written the way students write them, independently of the mistake
lambdas inside `exercises.py`, so a test fails if a hint stops reaching the mistake it is for.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kedit_teach.exercises import (TOKEN_ACCURACY, Exercise, _reference_token_accuracy,
                                   check_token_accuracy, outcome)


def run(capsys, fn) -> tuple[bool, str]:
    ok = check_token_accuracy(fn)
    return ok, capsys.readouterr().out


@pytest.mark.parametrize("fn", [
    _reference_token_accuracy,
    lambda logits, targets: (logits.argmax(dim=-1) == targets).float().mean(),   # a 0-d tensor
    lambda logits, targets: (logits.argmax(1) == targets).sum().item() / len(targets),
    lambda logits, targets: float(np.mean(logits.numpy().argmax(-1) == targets.numpy())),
    lambda logits, targets: (torch.softmax(logits, -1).argmax(-1) == targets).double().mean(),
])
def test_correct_solutions_pass(capsys, fn):
    ok, out = run(capsys, fn)
    assert ok is True and out.strip() == "✓ correct"


def exact_match(logits, targets):
    return float(all(p == t for p, t in zip(logits.argmax(-1).tolist(), targets.tolist())))


def shifted(logits, targets):
    preds = logits.argmax(-1)
    return (preds[:-1] == targets[1:]).float().mean().item()


def wrong_dim(logits, targets):
    return (torch.argmax(logits, dim=0) == targets).float().mean().item()


def per_position(logits, targets):
    return logits.argmax(-1) == targets


def count(logits, targets):
    return (logits.argmax(-1) == targets).sum()


def bool_mean(logits, targets):
    return (logits.argmax(-1) == targets).mean()


def max_values(logits, targets):
    values, _ = logits.max(dim=-1)
    return (values == targets).float().mean()


@pytest.mark.parametrize("fn, hint", [
    (exact_match, "exact match"),
    (lambda logits, targets: (logits.argmax(-1) == targets).all(), "exact match"),
    (shifted, "don't shift"),
    (wrong_dim, "the last dimension"),
    (per_position, "return one number"),
    (count, "return one number"),
    (bool_mean, ".float() first"),
    (max_values, "their positions"),
    (lambda logits, targets: 0.5, "average the matches"),  # no known mistake: the general hint
])
def test_typical_mistakes_get_their_own_hint(capsys, fn, hint):
    ok, out = run(capsys, fn)
    assert ok is False
    assert out.startswith("✗ not yet. On logits of shape") and "expected" in out
    assert "Hint: " in out and hint in out.split("Hint: ")[1]


def test_unfinished_and_misused_checks_explain_themselves(capsys):
    def stub(logits, targets):
        raise NotImplementedError
    assert run(capsys, stub) == (False, "✗ not implemented yet: replace `raise NotImplementedError` "
                                        "with your code\n")
    ok, out = run(capsys, 0.75)
    assert not ok and "pass the function itself" in out
    ok, out = run(capsys, lambda logits, targets: 1 / 0)
    assert not ok and "got ZeroDivisionError: division by zero" in out


def test_an_in_place_solution_cannot_spoil_later_cases(capsys):
    def destructive(logits, targets):
        result = (logits.argmax(-1) == targets).float().mean()
        logits.zero_()
        targets.fill_(-1)
        return result
    assert run(capsys, destructive)[0]
    assert run(capsys, _reference_token_accuracy)[0]


def test_every_mistake_is_wrong_and_tells_itself_apart():
    want = [outcome(TOKEN_ACCURACY.reference, c.args) for c in TOKEN_ACCURACY.cases]
    signatures = {}
    for mistake in TOKEN_ACCURACY.mistakes:
        for wrong in mistake.solutions:
            got = tuple(outcome(wrong, c.args) for c in TOKEN_ACCURACY.cases)
            assert list(got) != want, mistake.hint
            assert signatures.setdefault(got, mistake.hint) == mistake.hint  # no two hints collide


def test_a_broken_checker_never_raises_at_the_student(capsys):
    broken = Exercise(name="f", reference=len, cases=None, mistakes=[], hint="")
    assert broken.check(len) is False
    assert "the checker itself failed" in capsys.readouterr().out
