"""Exercises with automatic checks: the student writes a function, `check` says right or why not.

What it does: an `Exercise` is a reference solution, a few input cases, and a list of typical
`Mistake`s, each given as the wrong code a student would write plus the hint that fixes it.
`check(fn)` runs the student's function on every case; if it disagrees with the reference, the
mistake whose wrong solutions behave exactly like the student's (same values, or the same error,
on every case) picks the hint. So adding an exercise (GRACE's split rule, the sentinel decision)
means writing a reference, cases that tell the mistakes apart, and the mistakes themselves.

A check prints "✓ correct" and returns True, or prints what went wrong and a hint and returns
False. It never raises at the student: their errors are caught and explained.

Exercises: `check_next_token` (notebook 00); `check_token_accuracy` (notebook 01); `check_rank_one`
(notebook 02); `check_grace_decision`, `check_eps_choice` and `check_scope_decision` (notebook 03); `check_threefold` and `check_weight_gradient` (notebook 04);
`check_sentinel_decision` (notebook 05); `check_lifelong_score` (notebook 06).

What it does not do: show solutions. The references are private and never printed.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .alignment import threefold_facts
from .prompt_learning import sentinel_decision
from .mend import weight_gradient
from .scope import in_scope_of


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
    if isinstance(value, (bool, str, int)) or value is None:  # ints stay ints: token ids read as ids
        return value
    if isinstance(value, float):
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


# ----------------------------------------------------------------------------- notebook 00

def _reference_next_token(logits: torch.Tensor, k: int) -> tuple[list[int], list[float]]:
    top = logits[0, -1].softmax(-1).topk(k)
    return top.indices.tolist(), top.values.tolist()


# Each row is a distribution with at most 2 decimals and no ties among its top 3, so any correct
# softmax (float32 or float64, softmax() or exp()/sum) rounds to the same 6 decimals.
_DISTRIBUTIONS = [
    [0.05, 0.40, 0.10, 0.25, 0.01, 0.15, 0.03, 0.01],
    [0.30, 0.02, 0.08, 0.10, 0.22, 0.05, 0.18, 0.05],
    [0.60, 0.10, 0.30],
    [0.10, 0.20, 0.05, 0.60, 0.05],
    [0.10, 0.50, 0.15, 0.25],
    [0.40, 0.05, 0.35, 0.20],
]


def _model_logits(rows: list[int], shift: float) -> torch.Tensor:
    """Logits [1, T, V] (what `model(**inputs).logits` returns) whose softmax at position t is
    _DISTRIBUTIONS[rows[t]]; `shift` moves every logit, which a softmax ignores."""
    return (torch.tensor([_DISTRIBUTIONS[r] for r in rows]).log() + shift)[None]


def _next_token_case(rows: list[int], k: int, shift: float, why: str) -> Case:
    logits = _model_logits(rows, shift)
    return Case((logits, k), f"logits of shape {list(logits.shape)} and k={k} ({why})")


def _top(probs: torch.Tensor, k: int) -> tuple[list[int], list[float]]:
    top = probs.topk(k)
    return top.indices.tolist(), top.values.tolist()


NEXT_TOKEN = Exercise(
    name="next_token",
    reference=_reference_next_token,
    cases=[
        _next_token_case([1, 0], k=3, shift=2.0, why="two positions, vocabulary of 8"),
        _next_token_case([0], k=2, shift=-1.0, why="a one-token prompt"),
        _next_token_case([1, 1, 0], k=1, shift=0.5, why="k=1: the greedy choice"),
        _next_token_case([4, 5, 5, 4], k=2, shift=3.0, why="as many positions as vocabulary entries"),
        _next_token_case([3, 3], k=3, shift=0.0, why="raw logits that are already log-probabilities"),
    ],
    mistakes=[
        Mistake("position t holds the prediction for the token *after* token t, so the next token after "
                "the whole prompt is predicted at the last position: logits[0, -1], not logits[0, 0].",
                (lambda x, k: _top(x[0, 0].softmax(-1), k),)),
        Mistake("logits are scores (any real number), not probabilities: turn them into "
                "probabilities with a softmax over the vocabulary before taking the top k.",
                (lambda x, k: _top(x[0, -1], k), lambda x, k: _top(x[0, -1].log_softmax(-1), k))),
        Mistake("softmax over the vocabulary, the last dimension (dim=-1): at each position the "
                "probabilities of all possible next tokens sum to 1. dim=1 mixes positions.",
                (lambda x, k: _top(x.softmax(1)[0, -1], k), lambda x, k: _top(x.softmax(0)[0, -1], k))),
        Mistake("softmax over the whole vocabulary first, then take the top k: a softmax over only "
                "the k best logits inflates their probabilities so they always sum to 1.",
                (lambda x, k: (x[0, -1].topk(k).indices.tolist(), x[0, -1].topk(k).values.softmax(-1).tolist()),)),
        Mistake("torch.topk returns (values, indices): return the token ids first, then the "
                "probabilities, e.g. `return top.indices, top.values`.",
                (lambda x, k: tuple(reversed(_top(x[0, -1].softmax(-1), k))),
                 lambda x, k: x[0, -1].softmax(-1).topk(k))),
        Mistake("most likely first: sort in descending order (torch.topk already does). "
                "argsort() sorts ascending, so its first entries are the *least* likely tokens.",
                (lambda x, k: ((p := x[0, -1].softmax(-1)).argsort()[:k].tolist(), p.sort().values[:k].tolist()),
                 lambda x, k: ((p := x[0, -1].softmax(-1)).argsort()[-k:].tolist(), p.sort().values[-k:].tolist()))),
        Mistake("logits has shape [batch, positions, vocabulary]: index the batch too, logits[0, -1] "
                "is one vector of V scores. logits[-1] is still a [positions, vocabulary] matrix.",
                (lambda x, k: _top(x[-1].softmax(-1), k),)),
    ],
    hint="probs = logits[0, -1].softmax(-1), then top = probs.topk(k); return the ids and the "
         "probabilities as two lists, most likely first.",
)


def check_next_token(fn: Callable[[torch.Tensor, int], tuple]) -> bool:
    """Check `fn(logits [1, T, V], k) -> (ids of the k most likely next tokens, their probabilities)`."""
    return NEXT_TOKEN.check(fn)


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


# ----------------------------------------------------------------------------- notebook 03

def _decide(far: Callable, add: Callable, expand: Callable, split: Callable) -> Callable:
    """A decision rule from its parts: when an edit is far, and the radii add, expand and split return.

    The reference is the deck's four parts; each typical mistake below swaps exactly one of them.
    """
    def rule(d_min: float, eps_nearest: float, eps_init: float, same_label: bool) -> tuple:
        args = (d_min, eps_nearest, eps_init)
        if far(*args):
            return ("add", *add(*args))
        return ("expand", *expand(*args)) if same_label else ("split", *split(*args))
    return rule


def _far(d, e, ei):
    return d > e + ei


def _add(d, e, ei):
    return e, ei  # the nearest entry keeps its radius; the new one gets eps_init


def _expand(d, e, ei):
    return e + ei, None


def _split(d, e, ei):
    return d / 2, d / 2


_reference_grace_decision = _decide(_far, _add, _expand, _split)


def _decision_case(d_min: float, eps_nearest: float, eps_init: float, same_label: bool, why: str) -> Case:
    return Case((d_min, eps_nearest, eps_init, same_label),
                f"d_min={d_min}, eps_nearest={eps_nearest}, eps_init={eps_init}, "
                f"same_label={same_label} ({why})")


GRACE_DECISION = Exercise(
    name="grace_decision",
    reference=_reference_grace_decision,
    cases=[
        _decision_case(5.0, 1.0, 1.0, True, "far from the nearest entry"),
        _decision_case(1.5, 1.0, 1.0, True, "near, same label"),
        _decision_case(1.5, 1.0, 1.0, False, "near, another label"),
        _decision_case(0.4, 1.0, 0.5, True, "inside the nearest radius, same label"),
        _decision_case(2.0, 1.5, 0.5, True, "exactly at the boundary, same label"),
        _decision_case(2.0, 1.5, 0.5, False, "exactly at the boundary, another label"),
        _decision_case(3.0, 0.25, 1.0, False, "far from an entry shrunk by an earlier split"),
    ],
    mistakes=[
        Mistake("compare d_min with ε_i + ε_init, the nearest entry's own radius plus ε_init, not "
                "with ε_init alone: each entry's reach depends on its radius, which grows when it "
                "expands and shrinks when it splits.",
                (_decide(lambda d, e, ei: d > ei, _add, _expand, _split),
                 _decide(lambda d, e, ei: d >= ei, _add, _expand, _split))),
        Mistake("at the boundary, d_min = ε_i + ε_init, the edit counts as near: Algorithm 1 adds "
                "an entry only if d_min > ε_i + ε_init, strictly.",
                (_decide(lambda d, e, ei: d >= e + ei, _add, _expand, _split),)),
        Mistake("the deck's expand grows the radius by ε_init, to ε_i + ε_init. Setting it to d_min "
                "(just enough to cover the new key) is the 'coverage' variant, GRACE(expand=\"coverage\"), "
                "not the deck's rule.",
                (_decide(_far, _add, lambda d, e, ei: (d, None), _split),
                 _decide(_far, _add, lambda d, e, ei: (max(e, d), None), _split))),
        Mistake("a split sets both radii to d_min/2: the nearest entry shrinks and the new entry gets "
                "the same radius, so the two balls meet halfway and do not overlap.",
                (_decide(_far, _add, _expand, lambda d, e, ei: (e, d / 2)),
                 _decide(_far, _add, _expand, lambda d, e, ei: (d / 2, ei)),
                 _decide(_far, _add, _expand, lambda d, e, ei: (e / 2, d / 2)))),
        Mistake("on add the nearest entry is left as it is: return its radius ε_i unchanged as the "
                "second value (None is only for the third value, when no entry is added).",
                (_decide(_far, lambda d, e, ei: (None, ei), _expand, _split),)),
        Mistake("expand adds no entry, so the third value (the new entry's radius) is None.",
                (_decide(_far, _add, lambda d, e, ei: (e + ei, ei), _split),)),
    ],
    hint="far (d_min > ε_i + ε_init) → add with ε_init, nearest unchanged; near with the same label → "
         "expand to ε_i + ε_init; near with another label → split, both radii d_min/2.",
)


def check_grace_decision(fn: Callable[[float, float, float, bool], tuple]) -> bool:
    """Check `fn(d_min, eps_nearest, eps_init, same_label) -> (op, new eps of nearest, eps of new entry or None)`."""
    return GRACE_DECISION.check(fn)


def check_eps_choice(eps, rephrase_distance: float, locality_distance: float) -> bool:
    """Does a one-entry codebook of radius `eps` catch the rephrasing and leave the locality prompt?

    The distances are from the edit's key to the rephrasing's and the locality prompt's keys. A
    lookup fires when distance <= ε, so it works iff rephrase_distance <= eps < locality_distance.
    Prints why, returns True or False; never raises.
    """
    try:  # floats, ints, numpy scalars and 0-d tensors; not "1.5" or True
        value = math.nan if isinstance(eps, (str, bool)) else float(eps)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        print(f"✗ ε_init must be a positive number, e.g. 1.5; got {eps!r}")
        return False
    eps, d_r, d_l = value, float(rephrase_distance), float(locality_distance)
    if d_r >= d_l:
        print(f"✗ no ε_init works for this pair: the rephrasing's key ({d_r:.3f} away) is not closer than "
              f"the locality prompt's ({d_l:.3f}), so any ball that holds one holds the other. Closeness "
              "of keys is not closeness of meaning; that is GRACE's limit.")
        return False
    if eps < d_r:
        print(f"✗ too small: the rephrasing's key is {d_r:.3f} from the edit's key, outside ε = {eps:.3g}, "
              "so it misses the codebook and the model keeps its old answer. Make ε_init larger.")
        return False
    if eps >= d_l:
        print(f"✗ too large: the locality prompt's key is {d_l:.3f} away, within ε = {eps:.3g}, so the "
              "codebook answers it with the edit's value and an unrelated fact breaks. Make ε_init smaller.")
        return False
    print(f"✓ works: the rephrasing hits ({d_r:.3f} ≤ ε = {eps:.3g}) and the locality prompt passes "
          f"through ({d_l:.3f} > ε). Margins: {eps - d_r:.3f} and {d_l - eps:.3f}.")
    return True


def _scope_with(top: bool = True, strict: bool = True, gate: bool = True):
    def rule(probs, threshold):
        order = sorted(range(len(probs)), key=lambda i: -probs[i]) if top else list(range(len(probs)))
        for j in order:
            if not gate or (probs[j] > threshold if strict else probs[j] >= threshold):
                return j
            if top:
                return None
        return None
    return rule


SCOPE = Exercise(
    name="route",
    reference=in_scope_of,  # the rule SERAC's editor applies to the classifier's probabilities
    cases=[
        Case(([0.1, 0.92, 0.3], 0.5), "probabilities [0.1, 0.92, 0.3], threshold 0.5 (one edit is in scope)"),
        Case(([0.2, 0.4], 0.5), "probabilities [0.2, 0.4], threshold 0.5 (nothing is in scope)"),
        Case(([0.6, 0.97], 0.5), "probabilities [0.6, 0.97], threshold 0.5 (two above it, the second more likely)"),
        Case(([0.5, 0.1], 0.5), "probabilities [0.5, 0.1], threshold 0.5 (a tie with the threshold)"),
        Case(([0.3, 0.45], 0.25), "probabilities [0.3, 0.45], threshold 0.25 (a lower threshold)"),
        Case(([], 0.5), "no stored edits, threshold 0.5"),
    ],
    mistakes=[
        Mistake("take the most likely edit first, then compare it with the threshold. Returning the first "
                "edit above the threshold can hand the query to a less likely edit.", (_scope_with(top=False),)),
        Mistake("an edit applies only when its probability is *strictly* above the threshold; at exactly "
                "0.5 the classifier is undecided and the base model answers.", (_scope_with(strict=False),)),
        Mistake("the most likely edit is not always in scope: when even the best probability is below the "
                "threshold, return None, and the base model answers unchanged.", (_scope_with(gate=False),)),
    ],
    hint="j = the index of the largest probability; return j if probabilities[j] > threshold else None "
         "(and None when nothing is stored).",
)


def check_scope_decision(fn: Callable[[list[float], float], int | None]) -> bool:
    """Check `fn(probabilities, threshold) -> index or None` (SERAC's routing rule)."""
    return SCOPE.check(fn)


# ----------------------------------------------------------------------------- notebook 04

def _threefold_case(u: float, retrieved: list[str], why: str) -> Case:
    return Case((_DESCRIPTOR, retrieved, u), f"u={u}, retrieved={retrieved} ({why})")


_DESCRIPTOR = "The Eiffel Tower is located in Rome"
_RANKED = [_DESCRIPTOR, "The Louvre is located in Berlin", "Big Ben is located in Madrid",
           "The Colosseum is located in Oslo"]


def _threefold_with(first: float, second: float, exclude_own: bool = True, best_first: bool = True):
    def rule(descriptor: str, retrieved: list[str], u: float) -> list[str]:
        others = [t for t in retrieved if t != descriptor or not exclude_own]
        others = others if best_first else others[::-1]
        n = 0 if u < first else 1 if u < second else 2
        return [descriptor, *others[:n]]
    return rule


THREEFOLD = Exercise(
    name="threefold",
    reference=threefold_facts,  # the rule the alignment-data builder uses
    cases=[
        _threefold_case(0.1, _RANKED, "the first half of the draws"),
        _threefold_case(0.4, _RANKED, "late in the first half"),
        _threefold_case(0.7, _RANKED, "the third quarter"),
        _threefold_case(0.9, _RANKED, "the last quarter"),
        _threefold_case(0.5, _RANKED, "exactly at the first boundary"),
        _threefold_case(0.75, _RANKED[1:], "exactly at the second boundary, own text not retrieved"),
        _threefold_case(0.9, _RANKED[1:], "the last quarter, own text not retrieved"),
    ],
    mistakes=[
        Mistake("a memory returns each text as its own nearest neighbour, so the top of `retrieved` "
                "is usually the descriptor itself. Skip it: the distractors must be *other* descriptors, "
                "or the prompt repeats the true fact instead of testing the model against a look-alike.",
                (_threefold_with(0.5, 0.75, exclude_own=False),)),
        Mistake("the shares are 50% / 25% / 25%: the exact descriptor alone for u < 0.5, one "
                "distractor for 0.5 <= u < 0.75, two for u >= 0.75.",
                (_threefold_with(0.25, 0.5), _threefold_with(0.5, 0.5), _threefold_with(1 / 3, 2 / 3))),
        Mistake("the boundaries belong to the next bucket: u = 0.5 already gets one distractor "
                "(compare with u < 0.5, not u <= 0.5).",
                (lambda d, r, u: _threefold_with(0.5, 0.75)(d, r, u - 1e-9),)),
        Mistake("the distractors are the *most* similar descriptors, the top of the ranking, "
                "because those are the ones retrieval will confuse with the true fact at inference.",
                (_threefold_with(0.5, 0.75, best_first=False),)),
    ],
    hint="drop the descriptor from `retrieved`, then take 0, 1 or 2 of the top remaining ones for "
         "u < 0.5, u < 0.75, and otherwise; return [descriptor, *those].",
)


def check_threefold(fn: Callable[[str, list[str], float], list[str]]) -> bool:
    """Check `fn(descriptor, retrieved, u) -> [descriptor, *distractors]` (LTE's threefold strategy)."""
    return THREEFOLD.check(fn)


def _factor_case(u, delta, why: str) -> Case:
    return Case((torch.tensor(u, dtype=torch.float32), torch.tensor(delta, dtype=torch.float32)),
                f"u={u}, delta={delta} ({why})")


WEIGHT_GRADIENT = Exercise(
    name="weight_gradient",
    reference=weight_gradient,  # what MEND's update sums, with its pseudo factors
    cases=[
        _factor_case([[1.0, 2.0, 3.0]], [[1.0, -1.0]], "one token: d_in = 3, d_out = 2"),
        _factor_case([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]], [[2.0, 1.0], [1.0, 3.0]], "two tokens"),
        _factor_case([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [3.0, 1.0, 1.0]], [[1.0, 1.0], [0.0, 0.0], [2.0, -1.0]],
                     "three tokens, the middle one padding (all zeros)"),
    ],
    mistakes=[
        Mistake("W has d_out rows and d_in columns (it maps an input of d_in numbers to d_out), so each "
                "token's term is delta_t u_t^T, not u_t delta_t^T.", (lambda u, d: u.T @ d,)),
        Mistake("the gradient of a loss summed over tokens is the *sum* of the tokens' terms, not their "
                "mean: a padding token adds nothing, and dividing by T would count it.", (lambda u, d: d.T @ u / len(u),)),
        Mistake("every token that feeds the loss contributes, not only the last one.", (lambda u, d: torch.outer(d[-1], u[-1]),)),
    ],
    hint="one outer product per token, delta_t u_t^T, summed over the tokens: delta.T @ u.",
)


def check_weight_gradient(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """Check `fn(u [T, d_in], delta [T, d_out]) -> dL/dW [d_out, d_in]` (MEND's rank-one decomposition)."""
    return WEIGHT_GRADIENT.check(fn)


# ----------------------------------------------------------------------------- notebook 05

def _keys(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


_Q = torch.tensor([1.0, 0.0, 0.0])
_THETA = torch.tensor([0.5, 0.5, 0.0])  # q . r_Theta = 0.5


def _sentinel_case(keys: torch.Tensor, why: str, query: torch.Tensor = _Q, theta: torch.Tensor = _THETA) -> Case:
    def shown(t: torch.Tensor):
        return [shown(r) for r in t] if t.dim() > 1 else [round(x, 2) for x in t.tolist()]
    return Case((query, keys, theta), f"query={shown(query)}, keys={shown(keys)}, sentinel={shown(theta)} ({why})")


def _gate_with(score, top: bool = True, strict: bool = True, above: bool = True):
    def rule(q, keys, theta):
        if len(keys) == 0:
            return None
        s, gate = score(q, keys), score(q, theta[None])[0]
        order = s.argsort(descending=True).tolist() if top else list(range(len(s)))
        for j in order:
            passes = (s[j] > gate if strict else s[j] >= gate) if above else s[j] < gate
            if passes:
                return j
            if top:
                return None
        return None
    return rule


_dot = lambda q, keys: keys @ q  # noqa: E731
_cos = lambda q, keys: torch.nn.functional.cosine_similarity(keys, q[None], dim=-1)  # noqa: E731

SENTINEL = Exercise(
    name="decide",
    reference=sentinel_decision,  # the rule RECIPE's editor applies to faiss's top hit
    cases=[
        _sentinel_case(_keys([0.9, 0.1, 0.0], [0.2, 0.9, 0.0]), "the best key beats the sentinel"),
        _sentinel_case(_keys([0.3, 0.1, 0.0], [0.2, 0.9, 0.0]), "every key is below the sentinel"),
        _sentinel_case(_keys([0.6, 0.0, 0.0], [0.8, 0.0, 0.0]), "two keys above it, the second is closer"),
        _sentinel_case(_keys([4.0, 9.0, 0.0], [1.0, 0.0, 0.0]), "a long key pointing elsewhere, a short one aligned"),
        _sentinel_case(_keys([0.5, 3.0, 0.0]), "a tie: the key scores exactly what the sentinel does"),
        _sentinel_case(torch.zeros(0, 3), "an empty repository"),
    ],
    mistakes=[
        Mistake("RECIPE scores with the dot product r~_q . r_k (scaled by 1/sqrt(d), which changes no "
                "decision), not the cosine: the vectors' lengths are learned too, and the sentinel's "
                "threshold is on that scale.", (_gate_with(_cos),)),
        Mistake("attach a prompt only when the best key scores *strictly* more than the sentinel; "
                "on a tie the sentinel wins and nothing is attached.", (_gate_with(_dot, strict=False),)),
        Mistake("take the top-1 key first, then compare it with the sentinel. Returning the first key "
                "above the sentinel can attach a worse match than the best one.", (_gate_with(_dot, top=False),)),
        Mistake("it is the other way round: a prompt is attached when the key beats the sentinel, and "
                "nothing when the sentinel is closer.", (_gate_with(_dot, above=False),)),
    ],
    hint="scores = keys @ query; j = the argmax; return j if scores[j] > sentinel @ query else None "
         "(and None when there are no keys).",
)


def check_sentinel_decision(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], int | None]) -> bool:
    """Check `fn(query, keys, sentinel) -> index or None` (RECIPE's Knowledge Sentinel rule)."""
    return SENTINEL.check(fn)


# ----------------------------------------------------------------------------- notebook 02

def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def _rank_one_case(W, C, k, v, why: str) -> Case:
    return Case((_t(W), _t(C), _t(k), _t(v)), f"W={W}, C={C}, k={k}, v={v} ({why})")


def _rank_one_with(use_c: str = "inverse", residual: bool = True, normalise: bool = True, outer: bool = True):
    def update(W, C, k, v):
        u = {"inverse": torch.linalg.solve(C, k), "none": k, "C": C @ k}[use_c]
        r = v - W @ k if residual else v
        d = torch.outer(r, u) if outer else torch.outer(u, r)
        return d / (k @ u) if normalise else d
    return update


def _reference_rank_one(W, C, k, v):
    from .editors.rome import rank_one_update
    return rank_one_update(W, C, k, v)


# Powers of two and a C whose inverse is integer ([[2, 1], [1, 1]]^-1 = [[1, -1], [-1, 2]]), so a
# correct answer in float32 or float64 rounds to the same numbers.
RANK_ONE = Exercise(
    name="rank_one",
    reference=_reference_rank_one,
    cases=[
        _rank_one_case([[1, 0, 0], [0, 1, 0]], [[1, 0, 0], [0, 2, 0], [0, 0, 4]], [1, 2, 2], [3, 0],
                       "a diagonal C"),
        _rank_one_case([[1, 2], [0, 1], [1, 1]], [[2, 1], [1, 1]], [1, 1], [1, 2, 0], "a C that mixes the two key directions"),
        _rank_one_case([[1, 0], [0, 1]], [[1, 0], [0, 1]], [2, 0], [2, 0], "v = W k already: nothing to change"),
        _rank_one_case([[0.5, 0], [0, 0.5]], [[1, 0], [0, 1]], [0, 4], [1, 1], "C = I, the case without statistics"),
    ],
    mistakes=[
        Mistake("the update has to change W k into v, so the left factor is the residual v - W k, not v: "
                "with v = W k nothing should change.", (_rank_one_with(residual=False),)),
        Mistake("the right factor is C^-1 k (torch.linalg.solve(C, k)), not k: it is what keeps the change "
                "small on the keys C has seen often.", (_rank_one_with(use_c="none"),)),
        Mistake("C^-1 k, not C k: solve with C, don't multiply by it.", (_rank_one_with(use_c="C"),)),
        Mistake("divide by k^T C^-1 k, so that (W + Delta) k = v exactly.", (_rank_one_with(normalise=False),)),
        Mistake("Delta has W's shape [d_out, d_k]: torch.outer(v - W @ k, C^-1 k), in that order.",
                (_rank_one_with(outer=False),)),
    ],
    hint="u = torch.linalg.solve(C, k); return torch.outer(v - W @ k, u) / (k @ u)",
)


def check_rank_one(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """Check `fn(W, C, k, v) -> Delta` (ROME's Eq. 2: the rank-one update that maps k to v)."""
    return RANK_ONE.check(fn)


# ----------------------------------------------------------------------------- notebook 06

def _reference_lifelong_score(rel, gen, loc):
    scores = (rel, gen, loc)
    if any(s is None for s in scores):
        return None
    if min(scores) == 0:
        return 0.0
    return 3 / sum(1 / s for s in scores)


def _arithmetic(rel, gen, loc):
    return (rel + gen + loc) / 3


def _geometric(rel, gen, loc):
    return (rel * gen * loc) ** (1 / 3)


def _harmonic_no_zero(rel, gen, loc):
    return 3 / (1 / rel + 1 / gen + 1 / loc)


def _harmonic_none_as_zero(rel, gen, loc):
    return _reference_lifelong_score(*(0.0 if s is None else s for s in (rel, gen, loc)))


LIFELONG_SCORE = Exercise(
    name="lifelong_score",
    reference=_reference_lifelong_score,
    cases=[
        Case((1.0, 1.0, 1.0), "rel = gen = loc = 1.0 (a perfect editor)"),
        Case((0.5, 0.25, 1.0), "rel 0.5, gen 0.25, loc 1.0"),
        Case((0.98, 0.0, 0.98), "rel 0.98, gen 0.0, loc 0.98 (GRACE on CounterFact: rephrasings never hit)"),
        Case((0.99, 0.98, 0.2), "rel 0.99, gen 0.98, loc 0.2 (LTE's generation locality)"),
        Case((None, 0.5, 0.5), "rel None (a skipped cell: nothing was measured)"),
    ],
    mistakes=[
        Mistake("that is the arithmetic mean, the papers' 'Avg.' column: an editor with generality 0 still "
                "scores 0.65 there. Use the harmonic mean, 3 / (1/rel + 1/gen + 1/loc).", (_arithmetic,)),
        Mistake("the geometric mean also falls to 0 with a zero, but the exercise asks for the harmonic mean: "
                "3 / (1/rel + 1/gen + 1/loc).", (_geometric,)),
        Mistake("a score of 0 makes 1/x blow up: return 0.0 when any of the three is 0 (and None first, when one "
                "is None).", (_harmonic_no_zero,)),
        Mistake("a skipped cell (None) is not a score of 0: nothing was measured, so return None.",
                (_harmonic_none_as_zero,)),
    ],
    hint="return None if any score is None, 0.0 if any is 0, else 3 / (1/rel + 1/gen + 1/loc)",
)


def check_lifelong_score(fn: Callable[[float | None, float | None, float | None], float | None]) -> bool:
    """Check `fn(rel, gen, loc) -> score` (the harmonic mean, which no single strong metric can carry)."""
    return LIFELONG_SCORE.check(fn)
