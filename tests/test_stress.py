"""The weakness experiments (stress.py): conflicting edits A -> B, then A -> C; look-alike
distractors; far paraphrases; multi-hop questions; long-form edits."""
from __future__ import annotations

import pytest

from kedit_teach import stress
from kedit_teach.data import EditCase, load_teach
from kedit_teach.editors import Editor

from .test_turns import snapshot


def assert_as_loaded(model, before) -> None:
    """The model's modules and weights are exactly as in the `snapshot` taken before."""
    modules, weights = snapshot(model)
    assert modules == before[0] and all((weights[k] == v).all() for k, v in before[1].items())


def test_conflict_pairs_keep_the_prompt_and_take_another_answer_of_the_same_relation():
    cases = load_teach()[:8]
    loner = EditCase(case_id="x", subject="Ada", prompt="Ada Lovelace worked as a", target_new="pilot")
    pairs = stress.conflict_pairs(cases + [loner])
    assert [f.case_id for f, _ in pairs] == [c.case_id for c in cases]  # the loner has no partner
    targets = {c.target_new for c in cases}
    for first, second in pairs:
        assert (second.prompt, second.rephrase_prompts, second.locality) == (first.prompt, first.rephrase_prompts, first.locality)
        assert second.target_new in targets and second.target_new not in (first.target_new, first.ground_truth)
        assert second.case_id != first.case_id
    assert stress.conflict_pairs(cases, seed=0) == pairs and stress.conflict_pairs(cases, seed=1) != pairs


def test_outcome_reads_which_target_the_answer_starts_with():
    assert stress.outcome(" Rome, Italy.", "Madrid", "Rome") == "latest"
    assert stress.outcome("Madrid. It is", "Madrid", "Rome") == "first"
    assert stress.outcome("the city of Rome", "Madrid", "Rome") == "neither"


class Remembers(Editor):
    """A test double that answers each prompt with the target of one of its edits for that prompt."""
    name, which = "latest", -1

    def generate(self, prompt, max_new_tokens=20, **kw):
        said = []
        for p in prompt:
            targets = [c.target_new for c in self.cases.values() if p in (c.prompt, *c.rephrase_prompts)]
            said.append(f" {targets[self.which]}." if targets else " nothing")
        return said


class RemembersFirst(Remembers):
    name, which = "first", 0


def test_conflicts_count_which_edit_each_method_follows(gemma_tiny, monkeypatch):
    model, tok = gemma_tiny
    monkeypatch.setitem(stress.METHODS, "latest", Remembers)
    monkeypatch.setitem(stress.METHODS, "first", RemembersFirst)
    pairs = stress.conflict_pairs(load_teach()[:4])
    shares, answers, _ = stress.conflicts(model, tok, pairs, ["latest", "first"], progress=False)
    value = {(r["method"], r["kind"], r["outcome"]): r["value"] for r in shares}
    assert value[("latest", "edit prompt", "latest")] == value[("latest", "rephrasing", "latest")] == 1.0
    assert value[("first", "edit prompt", "first")] == 1.0 and value[("first", "edit prompt", "latest")] == 0.0
    assert len(shares) == 2 * 2 * len(stress.OUTCOMES)
    assert [(a["method"], a["answer"]) for a in answers[:2]] == [("latest", f"{pairs[0][1].target_new}."),
                                                                ("latest", f"{pairs[1][1].target_new}.")]


def test_conflicts_leave_the_model_as_loaded_and_shares_add_up(gemma_tiny):
    model, tok = gemma_tiny
    methods = ["ice", "grace"]
    before = snapshot(model)
    pairs = stress.conflict_pairs(load_teach()[:3])
    shares, answers, model = stress.conflicts(model, tok, pairs, methods, progress=False)
    for m in methods:
        for kind in ("edit prompt", "rephrasing"):
            assert sum(r["value"] for r in shares if (r["method"], r["kind"]) == (m, kind)) == pytest.approx(1.0)
    assert len(answers) == 2 * len(methods)
    assert_as_loaded(model, before)


class Distracted(Editor):
    """A test double: with n edits stored, the answers to the first n prompts it is asked change."""
    name = "distracted"

    def generate(self, prompt, max_new_tokens=20, **kw):
        said = super().generate(prompt, max_new_tokens, **kw)
        return [" changed" if i < len(self.cases) else s for i, s in enumerate(said)]


def _probes_and_background():
    teach = load_teach()
    return teach[:4], teach[10:16]


def test_distractors_count_changed_answers_per_store_size(gemma_tiny, monkeypatch):
    model, tok = gemma_tiny
    monkeypatch.setitem(stress.METHODS, "distracted", Distracted)
    probes, background = _probes_and_background()
    changed, answers, _ = stress.distractors(model, tok, probes, background, [1, 3, 6], ["distracted"], progress=False)
    assert [(r["stored"], r["value"]) for r in changed] == [(1, 0.25), (3, 0.75), (6, 1.0)]
    assert len(answers) == 3 and answers[0]["prompt"] == probes[0].prompt and answers[0]["after"] == "changed"
    assert answers[0]["before"] != "changed" and answers[0]["stored"] == 6


def test_distractors_refuse_probes_the_background_edits_and_bad_sizes(gemma_tiny):
    model, tok = gemma_tiny
    probes, background = _probes_and_background()
    with pytest.raises(ValueError, match="disjoint_subjects"):
        stress.distractors(model, tok, probes, background + probes[:1], [2], ["grace"], progress=False)
    for sizes in ([], [3, 2], [0], [7]):
        with pytest.raises(ValueError, match="increasing store sizes"):
            stress.distractors(model, tok, probes, background, sizes, ["grace"], progress=False)


def test_distractors_leave_the_model_as_loaded(gemma_tiny):
    model, tok = gemma_tiny
    before = snapshot(model)
    probes, background = _probes_and_background()
    changed, _, model = stress.distractors(model, tok, probes, background, [2, 4], ["grace"], progress=False)
    assert [r["stored"] for r in changed] == [2, 4] and all(0 <= r["value"] <= 1 for r in changed)
    assert_as_loaded(model, before)


def test_paraphrase_bins_split_rephrasings_into_equal_bins_the_farthest_first(encoder):
    cases = load_teach()[:6]
    rows = stress.paraphrase_bins(cases, bins=3, encoder=encoder)
    assert [r["prompt"] for r in rows] == [q for c in cases for q in c.rephrase_prompts]
    counts = [sum(r["bin"] == b for r in rows) for b in range(3)]
    assert max(counts) - min(counts) <= 1 and sum(counts) == len(rows)
    for near, far in ((1, 0), (2, 1)):
        assert min(r["similarity"] for r in rows if r["bin"] == near) >= max(r["similarity"] for r in rows if r["bin"] == far)
    same = EditCase(case_id="s", subject="X", prompt="X is in", target_new="Rome", rephrase_prompts=["X is in Rome"])
    assert stress.paraphrase_bins([same], bins=1, encoder=encoder)[0]["similarity"] > 0.99  # the descriptor itself
    with pytest.raises(ValueError, match="fewer bins"):
        stress.paraphrase_bins(cases[:1], bins=50, encoder=encoder)


class KnowsNearOnes(Editor):
    """A test double: answers a rephrasing with its edit's target only if it contains the edit prompt's first word."""
    name = "near"

    def generate(self, prompt, max_new_tokens=20, **kw):
        said = []
        for p in prompt:
            case = next(c for c in self.cases.values() if p in c.rephrase_prompts)
            said.append(f" {case.target_new}" if case.prompt.split()[0] in p else " nothing")
        return said


def test_paraphrases_score_each_bin_and_leave_the_model_as_loaded(gemma_tiny, encoder, monkeypatch):
    model, tok = gemma_tiny
    monkeypatch.setitem(stress.METHODS, "near", KnowsNearOnes)
    cases = load_teach()[:6]
    before = snapshot(model)
    rows, model = stress.paraphrases(model, tok, cases, ["near", "grace"], bins=2, encoder=encoder, progress=False)
    probes = stress.paraphrase_bins(cases, 2, encoder)
    for b in range(2):
        mine = [p for p in probes if p["bin"] == b]
        want = sum(p["case"].prompt.split()[0] in p["prompt"] for p in mine) / len(mine)
        (row,) = [r for r in rows if (r["method"], r["bin"]) == ("near", b)]
        sims = [p["similarity"] for p in mine]
        assert row["value"] == pytest.approx(want) and row["similarity"] == f"{min(sims):.2f}-{max(sims):.2f}"
    assert [r["method"] for r in rows] == ["near", "near", "grace", "grace"]
    assert_as_loaded(model, before)


def test_hop_outcome_tells_the_new_fact_the_target_and_the_old_answer_apart():
    assert stress.hop_outcome(" Spain, the", "Spain", "Madrid", " France.") == "new"
    assert stress.hop_outcome(" Madrid.", "Spain", "Madrid", " France.") == "target"
    assert stress.hop_outcome(" France\n[Query]", "Spain", "Madrid", " France. It is the") == "old"
    assert stress.hop_outcome(" Europe", "Spain", "Madrid", " France.") == "other"
    assert stress.hop_outcome(" Europe", "Spain", "Madrid", " ") == "other"  # no old answer to keep


class AnswersPortability(Editor):
    """A test double: answers the first portability question of each edit right, repeats the target on the rest."""
    name = "hops"

    def generate(self, prompt, max_new_tokens=20, **kw):
        said = []
        for p in prompt:
            case = next(c for c in self.cases.values() if p in [q for q, _ in c.portability])
            said.append(f" {case.portability[0][1]}" if p == case.portability[0][0] else f" {case.target_new}")
        return said


def test_multi_hop_shares_add_up_and_the_model_is_left_as_loaded(gemma_tiny, monkeypatch):
    model, tok = gemma_tiny
    monkeypatch.setitem(stress.METHODS, "hops", AnswersPortability)
    cases = load_teach()[:8]
    before = snapshot(model)
    shares, answers, model = stress.multi_hop(model, tok, cases, ["hops", "grace"], progress=False)
    value = {(r["method"], r["outcome"]): r["value"] for r in shares}
    questions = sum(len(c.portability) for c in cases)
    assert value[("hops", "new")] == pytest.approx(len(cases) / questions)
    assert value[("hops", "target")] == pytest.approx(1 - len(cases) / questions)
    for m in ("hops", "grace"):
        assert sum(value[(m, o)] for o in stress.HOP_OUTCOMES) == pytest.approx(1.0)
    assert [a["outcome"] for a in answers[:2]] == ["new", "target" if len(cases[0].portability) > 1 else "new"]
    assert_as_loaded(model, before)
    with pytest.raises(ValueError, match="no portability questions"):
        stress.multi_hop(model, tok, [EditCase(case_id="x", subject="X", prompt="X is in", target_new="Rome")],
                         ["grace"], progress=False)


BIOS = [EditCase(case_id=f"bio{i}", subject=name, prompt=f"This is a Wikipedia passage about {name}. {name} was {what}.",
                 target_new=sentence, locality=[(f"The field of work of {name} is", field)])
        for i, (name, what, sentence, field) in enumerate([
            ("Ada Lovelace", "an English mathematician", "She wrote the first program for the Analytical Engine.", "mathematics"),
            ("Nils Bohr", "a Danish physicist", "He founded an institute in Copenhagen in 1921 and ran it for forty years.", "physics")])]


class Copies(Editor):
    """A test double: continues each edited passage with its new sentence word for word, and leaves
    every other prompt to the model."""
    name = "copies"

    def generate(self, prompt, max_new_tokens=20, **kw):
        sentences = {c.prompt: c.target_new for c in self.cases.values()}
        if all(p in sentences for p in prompt):
            return [f" {sentences[p]}" for p in prompt]
        return super().generate(prompt, max_new_tokens, **kw)


def test_long_form_scores_each_method_and_leaves_the_model_as_loaded(gemma_tiny, monkeypatch):
    model, tok = gemma_tiny
    monkeypatch.setitem(stress.METHODS, "copies", Copies)
    before = snapshot(model)
    rows, answers, model = stress.long_form(model, tok, BIOS, ["copies", "grace"], settings={"grace": {"n_iter": 2}},
                                            progress=False)
    value = {(r["method"], r["measure"]): r["value"] for r in rows}
    assert sorted(value) == sorted((m, x) for m in ("copies", "grace") for x in stress.LONG_MEASURES)
    assert value[("copies", "sentence recall")] == 1.0 and value[("copies", "locality")] == 1.0
    assert value[("grace", "sentence recall")] < 1.0 and all(0 <= v <= 1 for v in value.values())
    assert [(a["method"], a["target"], a["recall"]) for a in answers[:2]] == [("copies", c.target_new, 1.0) for c in BIOS]
    assert_as_loaded(model, before)
    with pytest.raises(ValueError, match="no locality questions"):
        stress.long_form(model, tok, [EditCase(case_id="x", subject="X", prompt="X is in", target_new="Rome")],
                         ["grace"], progress=False)


def test_encoder_fits_keeps_the_knowledge_recipes_encoder_accepts(encoder):
    long = EditCase(case_id="long", subject="Ada Lovelace", prompt="Ada Lovelace was born in London. " * 20,
                    target_new="She was a mathematician.")
    assert stress.encoder_fits(BIOS + [long], encoder) == BIOS

