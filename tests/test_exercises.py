"""The exercise checks: the reference passes, and typical wrong solutions fail with their own hint.

The wrong solutions here are written the way students write them, independently of the mistake
lambdas inside `exercises.py`, so a test fails if a hint stops reaching the mistake it is for.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kedit_teach.exercises import (GRACE_DECISION, LIFELONG_SCORE, NEXT_TOKEN, SENTINEL, THREEFOLD, TOKEN_ACCURACY, Exercise,
                                   _reference_grace_decision, _reference_token_accuracy, check_eps_choice,
                                   check_grace_decision, check_lifelong_score, check_next_token, check_rank_one, check_scope_decision, check_sentinel_decision, check_weight_gradient, check_threefold,
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


@pytest.mark.parametrize("exercise", [NEXT_TOKEN, TOKEN_ACCURACY, GRACE_DECISION, THREEFOLD, SENTINEL, LIFELONG_SCORE],
                         ids=lambda e: e.name)
def test_every_mistake_is_wrong_and_tells_itself_apart(exercise):
    want = [outcome(exercise.reference, c.args) for c in exercise.cases]
    signatures = {}
    for mistake in exercise.mistakes:
        for wrong in mistake.solutions:
            got = tuple(outcome(wrong, c.args) for c in exercise.cases)
            assert list(got) != want, mistake.hint
            assert signatures.setdefault(got, mistake.hint) == mistake.hint  # no two hints collide


def test_a_broken_checker_never_raises_at_the_student(capsys):
    broken = Exercise(name="f", reference=len, cases=None, mistakes=[], hint="")
    assert broken.check(len) is False
    assert "the checker itself failed" in capsys.readouterr().out


# ----------------------------------------------------------------------------- GRACE's Algorithm 1

def decision(d_min, eps_nearest, eps_init, same_label):
    if d_min > eps_nearest + eps_init:
        return "add", eps_nearest, eps_init
    elif same_label:
        return "expand", eps_nearest + eps_init, None
    else:
        return "split", d_min / 2, d_min / 2


def grace_run(capsys, fn) -> tuple[bool, str]:
    ok = check_grace_decision(fn)
    return ok, capsys.readouterr().out


@pytest.mark.parametrize("fn", [
    _reference_grace_decision,
    decision,
    lambda d, e, ei, same: (["add", e, ei] if not d <= e + ei else
                            ["expand", e + ei, None] if same else ["split", 0.5 * d, 0.5 * d]),  # lists
    lambda d, e, ei, same: ("add", np.float32(e), torch.tensor(ei)) if d > e + ei else decision(d, e, ei, same),
])
def test_correct_grace_decisions_pass(capsys, fn):
    ok, out = grace_run(capsys, fn)
    assert ok is True and out.strip() == "✓ correct"


def only_eps_init(d_min, eps_nearest, eps_init, same_label):
    if d_min > eps_init:
        return "add", eps_nearest, eps_init
    if same_label:
        return "expand", eps_nearest + eps_init, None
    return "split", d_min / 2, d_min / 2


def coverage(d_min, eps_nearest, eps_init, same_label):
    op, *radii = decision(d_min, eps_nearest, eps_init, same_label)
    return (op, d_min, None) if op == "expand" else (op, *radii)


def keep_nearest_on_split(d_min, eps_nearest, eps_init, same_label):
    op, *radii = decision(d_min, eps_nearest, eps_init, same_label)
    return (op, eps_nearest, d_min / 2) if op == "split" else (op, *radii)


def new_gets_eps_init_on_split(d_min, eps_nearest, eps_init, same_label):
    op, *radii = decision(d_min, eps_nearest, eps_init, same_label)
    return (op, d_min / 2, eps_init) if op == "split" else (op, *radii)


def at_least(d_min, eps_nearest, eps_init, same_label):
    if d_min >= eps_nearest + eps_init:
        return "add", eps_nearest, eps_init
    return decision(d_min, eps_nearest, eps_init, same_label)


def none_on_add(d_min, eps_nearest, eps_init, same_label):
    op, *radii = decision(d_min, eps_nearest, eps_init, same_label)
    return (op, None, eps_init) if op == "add" else (op, *radii)


@pytest.mark.parametrize("fn, hint", [
    (only_eps_init, "not with ε_init alone"),
    (coverage, "'coverage' variant"),
    (keep_nearest_on_split, "both radii to d_min/2"),
    (new_gets_eps_init_on_split, "both radii to d_min/2"),
    (at_least, "strictly"),
    (none_on_add, "return its radius ε_i unchanged"),
    (lambda d, e, ei, same: ("expand", e + ei, None), "far (d_min > ε_i + ε_init) → add"),  # the general hint
])
def test_typical_grace_mistakes_get_their_own_hint(capsys, fn, hint):
    ok, out = grace_run(capsys, fn)
    assert ok is False and out.startswith("✗ not yet. On d_min=")
    assert hint in out.split("Hint: ")[1]


def test_the_boundary_case_is_named_when_only_the_comparison_is_off(capsys):
    _, out = grace_run(capsys, at_least)
    assert "exactly at the boundary" in out and "expected 3 values ('expand', 2.0, None)" in out


def test_unfinished_grace_decision(capsys):
    def stub(d_min, eps_nearest, eps_init, same_label):
        raise NotImplementedError
    assert grace_run(capsys, stub) == (False, "✗ not implemented yet: replace `raise NotImplementedError` "
                                              "with your code\n")


# ----------------------------------------------------------------------------- choosing ε_init

@pytest.mark.parametrize("eps", [1.7, 2.0, np.float32(2.1), torch.tensor(1.9)])
def test_an_eps_between_the_two_distances_works(capsys, eps):
    assert check_eps_choice(eps, 1.7, 2.2) is True  # 1.7: a rephrasing at exactly ε still hits
    assert capsys.readouterr().out.startswith("✓ works")


@pytest.mark.parametrize("eps, hint", [
    (1.0, "too small: the rephrasing's key is 1.700"),
    (1.69, "too small"),
    (2.2, "too large: the locality prompt's key is 2.200"),  # at exactly ε the lookup fires
    (20.0, "too large"),
    (0, "must be a positive number"),
    (-1.0, "must be a positive number"),
    ("2.0", "must be a positive number"),
    (None, "must be a positive number"),
    (float("nan"), "must be a positive number"),
])
def test_a_wrong_eps_says_why(capsys, eps, hint):
    assert check_eps_choice(eps, 1.7, 2.2) is False
    out = capsys.readouterr().out
    assert out.startswith("✗") and hint in out


def test_no_eps_works_when_the_rephrasing_is_farther_than_the_locality_prompt(capsys):
    assert check_eps_choice(2.0, 2.2, 1.7) is False
    assert "no ε_init works for this pair" in capsys.readouterr().out


# ----------------------------------------------------------------------------- notebook 04: threefold

def threefold_student(descriptor, retrieved, u):
    others = [r for r in retrieved if r != descriptor]
    k = 0 if u < 0.5 else (1 if u < 0.75 else 2)
    return [descriptor] + others[:k]


@pytest.mark.parametrize("fn", [
    threefold_student,
    lambda d, r, u: [d] + [x for x in r if x != d][:[0, 1, 2][(u >= 0.5) + (u >= 0.75)]],
])
def test_correct_threefold_passes(capsys, fn):
    assert check_threefold(fn) is True and capsys.readouterr().out.strip() == "✓ correct"


@pytest.mark.parametrize("fn, hint", [
    (lambda d, r, u: [d] + r[:0 if u < 0.5 else 1 if u < 0.75 else 2], "its own nearest neighbour"),
    (lambda d, r, u: [d] + [x for x in r if x != d][:0 if u < 1 / 3 else 1 if u < 2 / 3 else 2], "50% / 25% / 25%"),
    (lambda d, r, u: [d] + [x for x in r if x != d][:0 if u <= 0.5 else 1 if u <= 0.75 else 2], "boundaries belong"),
    (lambda d, r, u: [d] + [x for x in r if x != d][::-1][:0 if u < 0.5 else 1 if u < 0.75 else 2], "*most* similar"),
])
def test_typical_threefold_mistakes_get_their_own_hint(capsys, fn, hint):
    assert check_threefold(fn) is False
    assert hint in capsys.readouterr().out


# ----------------------------------------------------------------------------- next-token probabilities

def next_token_student(logits, k):
    probs = torch.softmax(logits[0, -1], dim=-1)
    values, indices = torch.topk(probs, k)
    return indices.tolist(), values.tolist()


def by_hand(logits, k):
    scores = logits[0][-1].double()
    probs = scores.exp() / scores.exp().sum()
    order = torch.sort(probs, descending=True).indices[:k]
    return order, probs[order]  # tensors, float64


@pytest.mark.parametrize("fn", [next_token_student, by_hand,
                                lambda x, k: (x[0, -1].argsort(descending=True)[:k].tolist(),
                                              sorted(x[0, -1].softmax(0).tolist(), reverse=True)[:k])])
def test_correct_next_token_passes(capsys, fn):
    assert check_next_token(fn) is True and capsys.readouterr().out.strip() == "✓ correct"


@pytest.mark.parametrize("fn, hint", [
    (lambda x, k: torch.topk(torch.softmax(x[0, 0], -1), k)[::-1], "the last position"),
    (lambda x, k: (x[0, -1].topk(k).indices, x[0, -1].topk(k).values), "not probabilities"),
    (lambda x, k: (x.softmax(dim=1)[0, -1].topk(k).indices, x.softmax(dim=1)[0, -1].topk(k).values), "dim=1 mixes"),
    (lambda x, k: (lambda t: (t.indices, t.values.softmax(-1)))(x[0, -1].topk(k)), "whole vocabulary first"),
    (lambda x, k: torch.topk(torch.softmax(x[0, -1], -1), k), "returns (values, indices)"),
    (lambda x, k: (lambda p: (p.argsort()[:k], p.sort().values[:k]))(x[0, -1].softmax(-1)), "sorts ascending"),
    (lambda x, k: (lambda t: (t.indices, t.values))(x[-1].softmax(-1).topk(k)), "index the batch"),
])
def test_typical_next_token_mistakes_get_their_own_hint(capsys, fn, hint):
    assert check_next_token(fn) is False
    out = capsys.readouterr().out
    assert out.startswith("✗ not yet. On logits of shape [1, 2, 8] and k=3") and hint in out.split("Hint: ")[1]


# ----------------------------------------------------------------------------- notebook 05: the sentinel

def sentinel_student(query, keys, sentinel):
    if len(keys) == 0:
        return None
    scores = keys @ query
    best = int(torch.argmax(scores))
    return best if scores[best] > torch.dot(sentinel, query) else None


@pytest.mark.parametrize("fn", [
    sentinel_student,
    lambda q, k, s: (lambda sc: None if not len(sc) or sc.max() <= s @ q / 4 else sc.argmax().item())(k @ q / 4),
])
def test_correct_sentinel_decision_passes(capsys, fn):
    assert check_sentinel_decision(fn) is True and capsys.readouterr().out.strip() == "✓ correct"


@pytest.mark.parametrize("fn, hint", [
    (lambda q, k, s: (lambda c: None if not len(k) or c.max() <= torch.nn.functional.cosine_similarity(s, q, dim=0)
                      else int(c.argmax()))(torch.nn.functional.cosine_similarity(k, q[None], dim=-1)), "not the cosine"),
    (lambda q, k, s: None if not len(k) or (k @ q).max() < s @ q else int((k @ q).argmax()), "*strictly*"),
    (lambda q, k, s: next((j for j in range(len(k)) if k[j] @ q > s @ q), None), "top-1 key first"),
    (lambda q, k, s: None if not len(k) or (k @ q).max() >= s @ q else int((k @ q).argmax()), "other way round"),
])
def test_typical_sentinel_mistakes_get_their_own_hint(capsys, fn, hint):
    assert check_sentinel_decision(fn) is False
    assert hint in capsys.readouterr().out.split("Hint: ")[1]


# ----------------------------------------------------------------------------- notebook 03: SERAC's routing rule

@pytest.mark.parametrize("fn", [
    lambda p, t: (lambda j: j if j is not None and p[j] > t else None)(max(range(len(p)), key=p.__getitem__, default=None)),
    lambda p, t: int(torch.tensor(p).argmax()) if p and max(p) > t else None,
])
def test_correct_scope_decision_passes(capsys, fn):
    assert check_scope_decision(fn) is True and capsys.readouterr().out.strip() == "✓ correct"


@pytest.mark.parametrize("fn, hint", [
    (lambda p, t: next((j for j in range(len(p)) if p[j] > t), None), "most likely edit first"),
    (lambda p, t: int(torch.tensor(p).argmax()) if p and max(p) >= t else None, "*strictly*"),
    (lambda p, t: int(torch.tensor(p).argmax()) if p else None, "return None"),
])
def test_typical_scope_mistakes_get_their_own_hint(capsys, fn, hint):
    assert check_scope_decision(fn) is False
    assert hint in capsys.readouterr().out.split("Hint: ")[1]


# ----------------------------------------------------------------------------- notebook 04: MEND's rank-one gradient

def test_a_correct_weight_gradient_passes_and_equals_autograd(capsys):
    def student(u, delta):
        return sum(torch.outer(d, x) for x, d in zip(u, delta))
    assert check_weight_gradient(student) is True and capsys.readouterr().out.strip() == "✓ correct"
    u, W = torch.randn(4, 3), torch.randn(2, 3, requires_grad=True)
    out = u @ W.T
    delta = torch.randn_like(out)
    (out * delta).sum().backward()  # a loss whose gradient at the output is delta
    assert torch.allclose(student(u, delta), W.grad)


@pytest.mark.parametrize("fn, hint", [
    (lambda u, d: u.T @ d, "not u_t delta_t^T"),
    (lambda u, d: d.T @ u / len(u), "*sum*"),
    (lambda u, d: torch.outer(d[-1], u[-1]), "not only the last one"),
])
def test_typical_weight_gradient_mistakes_get_their_own_hint(capsys, fn, hint):
    assert check_weight_gradient(fn) is False
    assert hint in capsys.readouterr().out.split("Hint: ")[1]


# ----------------------------------------------------------------------------- notebook 02: ROME's rank-one update

@pytest.mark.parametrize("fn", [
    lambda W, C, k, v: torch.outer(v - W @ k, torch.linalg.inv(C) @ k) / (k @ torch.linalg.inv(C) @ k),
    lambda W, C, k, v: (lambda u: ((v - W @ k)[:, None] * u[None]) / (k @ u))(torch.linalg.solve(C.double(), k.double()).float()),
])
def test_correct_rank_one_updates_pass(capsys, fn):
    assert check_rank_one(fn) is True and capsys.readouterr().out.strip() == "✓ correct"


@pytest.mark.parametrize("fn, hint", [
    (lambda W, C, k, v: torch.outer(v, torch.linalg.solve(C, k)) / (k @ torch.linalg.solve(C, k)), "residual v - W k"),
    (lambda W, C, k, v: torch.outer(v - W @ k, k) / (k @ k), "not k"),
    (lambda W, C, k, v: torch.outer(v - W @ k, C @ k) / (k @ C @ k), "not C k"),
    (lambda W, C, k, v: torch.outer(v - W @ k, torch.linalg.solve(C, k)), "divide by k^T C^-1 k"),
    (lambda W, C, k, v: torch.outer(torch.linalg.solve(C, k), v - W @ k) / (k @ torch.linalg.solve(C, k)), "in that order"),
])
def test_typical_rank_one_mistakes_get_their_own_hint(capsys, fn, hint):
    assert check_rank_one(fn) is False
    assert hint in capsys.readouterr().out.split("Hint: ")[1]


# ----------------------------------------------------------------------------- notebook 06: one score per cell

def lifelong_student(rel, gen, loc):
    if None in (rel, gen, loc):
        return None
    return 0.0 if 0 in (rel, gen, loc) else len((rel, gen, loc)) / sum(1 / x for x in (rel, gen, loc))


def test_correct_lifelong_score_passes(capsys):
    import statistics
    assert check_lifelong_score(lifelong_student) is True and capsys.readouterr().out.strip() == "✓ correct"
    assert check_lifelong_score(lambda *s: None if None in s else statistics.harmonic_mean(s)) is True


@pytest.mark.parametrize("fn, hint", [
    (lambda r, g, l: (r + g + l) / 3, "the papers' 'Avg.'"),
    (lambda r, g, l: 3 / (1 / r + 1 / g + 1 / l), "blow up"),
    (lambda r, g, l: lifelong_student(*(x or 0.0 for x in (r, g, l))), "not a score of 0"),
])
def test_typical_lifelong_score_mistakes_get_their_own_hint(capsys, fn, hint):
    assert check_lifelong_score(fn) is False
    assert hint in capsys.readouterr().out.split("Hint: ")[1]
