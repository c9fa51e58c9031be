"""Exercises with automatic checks: the student writes a function, `check` says right or why not.

What it does: an `Exercise` is a reference solution, a few input cases, and a list of typical
`Mistake`s, each given as the wrong code a student would write plus the hint that fixes it.
`check(fn)` runs the student's function on every case; if it disagrees with the reference, the
mistake whose wrong solutions behave exactly like the student's (same values, or the same error,
on every case) picks the hint. So adding an exercise (GRACE's split rule, the sentinel decision)
means writing a reference, cases that tell the mistakes apart, and the mistakes themselves.

A check prints "✓ correct" and returns True, or prints what went wrong and a hint and returns
False. It never raises at the student: their errors are caught and explained.

What it does not do: show solutions. The references are private and never printed.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class Outcome:
    """What a function did on one case: returned a value (rounded) or raised an error type."""
    key: tuple
    shown: str = field(compare=False)  # how it is described to the student


def _canonical(value: Any) -> Any:
    """A comparable form: tensors and arrays become numbers or tuples, floats are rounded."""
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(v) for v in value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return "nan" if math.isnan(value) else round(float(value), 6)
    return repr(value)


def outcome(fn: Callable, args: tuple) -> Outcome:
    try:
        # copies, so that a function that edits its inputs in place can't change later cases
        value = _canonical(fn(*copy.deepcopy(args)))
    except Exception as error:
        return Outcome(("raised", type(error).__name__), f"{type(error).__name__}: {error}")
    shown = value if not isinstance(value, tuple) else f"{len(value)} values {value}"
    return Outcome(("value", value), str(shown))


@dataclass
class Case:
    args: tuple
    about: str  # the inputs in words, shown when the student's answer is wrong


@dataclass
class Mistake:
    hint: str
    solutions: tuple[Callable, ...]  # typical wrong code that deserves this hint


@dataclass
class Exercise:
    name: str
    reference: Callable
    cases: list[Case]
    mistakes: list[Mistake]
    hint: str  # when no known mistake explains the answer

    def check(self, fn: Callable) -> bool:
        try:
            return self._check(fn)
        except Exception as error:  # a bug in the checker must not look like the student's fault
            print(f"✗ the checker itself failed ({type(error).__name__}: {error}); please report it")
            return False

    def _check(self, fn: Callable) -> bool:
        if not callable(fn):
            print(f"✗ pass the function itself, e.g. check({self.name}), not the result of calling it")
            return False
        got = [outcome(fn, c.args) for c in self.cases]
        want = [outcome(self.reference, c.args) for c in self.cases]
        if got == want:
            print("✓ correct")
            return True
        if all(o.key == ("raised", "NotImplementedError") for o in got):
            print("✗ not implemented yet: replace `raise NotImplementedError` with your code")
            return False
        i = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
        print(f"✗ not yet. On {self.cases[i].about}: expected {want[i].shown}, got {got[i].shown}.")
        print(f"Hint: {self._diagnose(got)}")
        return False

    def _diagnose(self, got: list[Outcome]) -> str:
        for mistake in self.mistakes:
            for wrong in mistake.solutions:
                if [outcome(wrong, c.args) for c in self.cases] == got:
                    return mistake.hint
        return self.hint


# ----------------------------------------------------------------------------- notebook 01

def _reference_token_accuracy(logits: torch.Tensor, target_ids: torch.Tensor) -> float:
    return (logits.argmax(-1) == target_ids).float().mean().item()


def _aligned_logits(preds: list[int], vocab: int, seed: int) -> torch.Tensor:
    """Random logits [T, vocab] whose argmax at position t is preds[t]."""
    logits = torch.randn(len(preds), vocab, generator=torch.Generator().manual_seed(seed))
    logits[torch.arange(len(preds)), torch.tensor(preds)] += 10.0
    return logits


def _token_case(preds: list[int], targets: list[int], vocab: int, seed: int) -> Case:
    return Case((_aligned_logits(preds, vocab, seed), torch.tensor(targets)),
                f"logits of shape [{len(preds)}, {vocab}] and target_ids {targets}")


def _matches(logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1) == target_ids


TOKEN_ACCURACY = Exercise(
    name="token_accuracy",
    reference=_reference_token_accuracy,
    cases=[
        _token_case([1, 2, 0, 4], [1, 2, 3, 4], vocab=6, seed=0),   # 3 of 4 right
        _token_case([2, 3, 4, 0], [1, 2, 3, 4], vocab=8, seed=1),   # right only if shifted
        _token_case([1, 2, 0], [1, 2, 1], vocab=3, seed=2),         # square: a wrong dim runs, wrongly
        _token_case([5, 7], [5, 7], vocab=10, seed=3),              # all right
        _token_case([3], [2], vocab=5, seed=4),                     # a one-token target
    ],
    mistakes=[
        Mistake("you return 1 only when every target token is right: that is exact match (the "
                "`teacher_forced_exact` protocol). Token accuracy is the per-token mean: 3 right "
                "out of 4 target tokens is 0.75.",
                (lambda x, y: _matches(x, y).all().float(),
                 lambda x, y: float(torch.equal(x.argmax(-1), y)))),
        Mistake("don't shift. The logits are already aligned: logits[t] is the prediction for "
                "target_ids[t]. The shift by one (position p predicts token p+1) was done when the "
                "logits were gathered at the target positions (see `metrics.pack_targets`).",
                (lambda x, y: (x[:-1].argmax(-1) == y[1:]).float().mean(),
                 lambda x, y: (x[1:].argmax(-1) == y[:-1]).float().mean())),
        Mistake("take the argmax over the vocabulary, the last dimension: logits has shape [T, V], "
                "so logits.argmax(-1) gives one predicted token id per target position.",
                (lambda x, y: (x.argmax(0) == y).float().mean(),)),
        Mistake("return one number: the mean of the per-position matches, not the matches "
                "themselves or their count.",
                (lambda x, y: _matches(x, y).float(), lambda x, y: _matches(x, y).sum())),
        Mistake("a boolean tensor has no mean: turn the matches into numbers with .float() first.",
                (lambda x, y: _matches(x, y).mean(),)),
        Mistake("logits.max(-1) gives the largest logit *values*; you need their positions, the "
                "token ids: logits.argmax(-1) (or logits.max(-1).indices).",
                (lambda x, y: (x.max(-1).values == y).float().mean(),
                 lambda x, y: (x.max(-1)[0] == y).float().mean())),
    ],
    hint="compare logits.argmax(-1) with target_ids position by position and average the matches.",
)


def check_token_accuracy(fn: Callable[[torch.Tensor, torch.Tensor], float]) -> bool:
    """Check `fn(logits [T, V], target_ids [T]) -> mean over t of 1{argmax logits[t] == target_ids[t]}`."""
    return TOKEN_ACCURACY.check(fn)
