"""The deck's closing question, "what are the weaknesses of LTE and RECIPE?", as experiments that
every method takes in turn on one loaded model (notebook 06).

    conflicts   edit A -> B, later A -> C (the same prompt, another answer of the same kind): does
                the method answer with the latest edit, the first one, or neither?
    distractors questions about subjects never edited, against a store of 100 ... 10,000 other
                facts (many about look-alike subjects): how many answers does the store change?
    paraphrases generality split by how far each rephrasing is from the edit's knowledge sentence
                (MiniLM cosine): which methods lose the far ones?
    multi_hop   portability questions (the Eiffel Tower is now in Madrid: which country?): does the
                answer follow the new fact, repeat the edit's target, keep the old fact, or neither?
    long_form   a biography passage continued by a whole new sentence (KnowEdit WikiBio): how much
                of the sentence comes back, and do questions about the person keep their answers?

A lifelong editor must let a newer fact replace an older one. Weight editors write the second
edit over the first; GRACE's codebook and the retrieval methods keep both entries, and then the
question is which one a query reaches: RECIPE attaches the top-1 knowledge, LTE reads its top-k
facts in one context, and neither knows which came last. The other three ask what retrieval by
similarity costs: a store full of near-namesakes, a rephrasing far from the stored sentence, a
question about a consequence the stored sentence never states, and knowledge a paragraph long.

What it does not do: score the usual metrics (see `evaluate.py`), or plot (see `viz.py`).
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace

from tqdm.auto import tqdm

from .data import EditCase, disjoint_subjects
from .editors import FAST_SETTINGS, METHODS
from .encoder_layers import ENCODER_MAX_TOKENS
from .metrics import generation_match, normalize, word_recall
from .models import load_encoder

OUTCOMES = ("latest", "first", "neither")
HOP_OUTCOMES = ("new", "target", "old", "other")
LONG_MEASURES = ("token accuracy", "sentence recall", "locality")
ANSWER_TOKENS = 6


def conflict_pairs(cases: list[EditCase], seed: int = 0) -> list[tuple[EditCase, EditCase]]:
    """(first, second) per case: the second edit keeps the case's prompt, rephrasings and locality
    and takes the target_new of another case whose prompt ends in the same two words (the same
    relation: "... the city of"), unlike both the first target and the true answer. Cases with no
    such partner are left out."""
    rng = random.Random(seed)
    answers = defaultdict(set)
    for c in cases:
        answers[tuple(c.prompt.split()[-2:])].add(c.target_new)
    pairs = []
    for case in cases:
        others = sorted(answers[tuple(case.prompt.split()[-2:])] - {case.target_new, case.ground_truth})
        if others:
            pairs.append((case, replace(case, case_id=f"{case.case_id}/again", target_new=rng.choice(others),
                                        portability=[])))
    return pairs


def outcome(answer: str, first: str, latest: str) -> str:
    """Which edit a generated answer follows (it starts with that target, as in the generation protocol)."""
    if generation_match(answer, latest):
        return "latest"
    return "first" if generation_match(answer, first) else "neither"


def conflicts(model, tokenizer, pairs: list[tuple[EditCase, EditCase]], methods: list[str],
              settings: dict[str, dict] | None = None, shown: int = 2,
              progress: bool = True) -> tuple[list[dict], list[dict], object]:
    """Each method makes every first edit, then every second edit (other edits in between, as in
    lifelong use), and answers each edit prompt and its first rephrasing; then it is detached.

    Returns (shares, answers, the model as loaded). shares: {"method", "kind", "outcome", "value"}
    (the share of pairs), one per method, probe kind and outcome; answers: the first `shown` edit
    prompts per method, {"method", "prompt", "first", "latest", "answer", "outcome"}.
    settings: constructor options per method (default FAST_SETTINGS).
    """
    settings = FAST_SETTINGS if settings is None else settings
    firsts, seconds = [p[0] for p in pairs], [p[1] for p in pairs]
    kinds = {"edit prompt": [c.prompt for c in firsts],
             "rephrasing": [c.rephrase_prompts[0] if c.rephrase_prompts else c.prompt for c in firsts]}
    shares, shown_answers = [], []
    for name in tqdm(methods, desc="A -> B, then A -> C, per method", disable=not progress):
        editor = METHODS[name](model, tokenizer, **settings.get(name, {}))
        for case in tqdm(firsts + seconds, desc=name, leave=False, disable=not progress):
            editor.edit(case)
        for kind, prompts in kinds.items():
            answers = [a.strip() for a in editor.generate(prompts, ANSWER_TOKENS)]
            got = [outcome(a, f.target_new, s.target_new) for a, f, s in zip(answers, firsts, seconds)]
            shares += [{"method": name, "kind": kind, "outcome": o, "value": got.count(o) / len(got)} for o in OUTCOMES]
            if kind == "edit prompt":
                shown_answers += [{"method": name, "prompt": p, "first": f.target_new, "latest": s.target_new,
                                   "answer": a, "outcome": o}
                                  for p, f, s, a, o in list(zip(prompts, firsts, seconds, answers, got))[:shown]]
        model = editor.detach()
    return shares, shown_answers, model


def _unedited(model, tokenizer, prompts: list[str]) -> tuple[list[str], object]:
    """The unedited model's greedy answers, and the model as loaded (through NoEdit, detached)."""
    plain = METHODS["noedit"](model, tokenizer)
    return plain.generate(prompts, ANSWER_TOKENS), plain.detach()


def distractors(model, tokenizer, probes: list[EditCase], background: list[EditCase], sizes: list[int],
                methods: list[str], settings: dict[str, dict] | None = None, shown: int = 3,
                progress: bool = True) -> tuple[list[dict], list[dict], object]:
    """Each method stores the first `sizes[0]`, then `sizes[1]`, ... background edits and after each
    size answers every probe's prompt; then it is detached. No probe's subject is in the background
    (else ValueError), so the unedited model's answer is the right one and any change is a distractor's.

    Returns (changed, answers, the model as loaded). changed: {"method", "stored", "value"}, the share
    of probes whose greedy answer differs from the unedited model's; answers: up to `shown` changed
    ones per method at the largest size, {"method", "stored", "prompt", "before", "after"}.
    """
    settings = FAST_SETTINGS if settings is None else settings
    if sorted(sizes) != list(sizes) or not sizes or sizes[0] < 1 or sizes[-1] > len(background):
        raise ValueError(f"sizes={sizes}: give increasing store sizes between 1 and len(background)={len(background)}")
    if len(disjoint_subjects(probes, background)) != len(probes):
        raise ValueError("some probes ask about a subject the background edits: the edited answer would be right "
                         "there; pass disjoint_subjects(probes, background)")
    prompts = [c.prompt for c in probes]
    before, model = _unedited(model, tokenizer, prompts)
    changed, shown_answers = [], []
    for name in tqdm(methods, desc="unrelated questions, growing store, per method", disable=not progress):
        editor = METHODS[name](model, tokenizer, **settings.get(name, {}))
        for n in tqdm(sizes, desc=name, leave=False, disable=not progress):
            editor.edit(background[len(editor.cases):n])
            after = editor.generate(prompts, ANSWER_TOKENS)
            diff = [i for i, (a, b) in enumerate(zip(after, before)) if a != b]
            changed.append({"method": name, "stored": n, "value": len(diff) / len(prompts)})
        shown_answers += [{"method": name, "stored": sizes[-1], "prompt": prompts[i], "before": before[i].strip(),
                           "after": after[i].strip()} for i in diff[:shown]]
        model = editor.detach()
    return changed, shown_answers, model


def paraphrase_bins(cases: list[EditCase], bins: int = 4, encoder=None) -> list[dict]:
    """Every rephrasing of every case with its MiniLM cosine to the case's knowledge sentence
    (prompt + target_new, what retrieval methods store) and its bin: `bins` equal-count bins,
    the farthest first. {"case", "prompt", "similarity", "bin"} per rephrasing."""
    probes = [(c, q) for c in cases for q in c.rephrase_prompts]
    if len(probes) < bins:
        raise ValueError(f"{len(probes)} rephrasings for {bins} bins: pass cases with rephrase_prompts, or fewer bins")
    encoder = encoder if encoder is not None else load_encoder()
    q = encoder.encode([p for _, p in probes], normalize_embeddings=True, convert_to_tensor=True)
    k = encoder.encode([c.descriptor for c, _ in probes], normalize_embeddings=True, convert_to_tensor=True)
    sims = (q * k).sum(-1).tolist()
    order = sorted(range(len(probes)), key=sims.__getitem__)
    rows = [None] * len(probes)
    for rank, i in enumerate(order):
        c, p = probes[i]
        rows[i] = {"case": c, "prompt": p, "similarity": sims[i], "bin": rank * bins // len(probes)}
    return rows


def paraphrases(model, tokenizer, cases: list[EditCase], methods: list[str], bins: int = 4,
                settings: dict[str, dict] | None = None, encoder=None,
                progress: bool = True) -> tuple[list[dict], object]:
    """Each method makes every edit, answers every rephrasing (greedy, the generation protocol),
    and is detached. Returns (rows, the model as loaded); rows: {"method", "bin", "similarity"
    (the bin's cosine range as text), "value" (the share of its rephrasings answered with
    target_new)}, one per method and bin, the farthest bin first."""
    settings = FAST_SETTINGS if settings is None else settings
    probes = paraphrase_bins(cases, bins, encoder)
    ranges = {}
    for b in range(bins):
        s = [p["similarity"] for p in probes if p["bin"] == b]
        ranges[b] = f"{min(s):.2f}-{max(s):.2f}"
    rows = []
    for name in tqdm(methods, desc="rephrasings by distance, per method", disable=not progress):
        editor = METHODS[name](model, tokenizer, **settings.get(name, {}))
        editor.edit(cases)
        answers = editor.generate([p["prompt"] for p in probes], ANSWER_TOKENS)
        right = [generation_match(a, p["case"].target_new) for a, p in zip(answers, probes)]
        for b in range(bins):
            got = [r for r, p in zip(right, probes) if p["bin"] == b]
            rows.append({"method": name, "bin": b, "similarity": ranges[b], "value": sum(got) / len(got)})
        model = editor.detach()
    return rows, model


def hop_outcome(answer: str, new: str, target: str, before: str) -> str:
    """What a portability answer does: follows the new fact (starts with the portability answer),
    repeats the edit's target_new, keeps the old fact (starts with the unedited model's first
    word: "France" before and after), or none of these."""
    if generation_match(answer, new):
        return "new"
    if generation_match(answer, target):
        return "target"
    first = normalize(before).split()[:1]
    return "old" if first and normalize(answer).split()[:1] == first else "other"


def multi_hop(model, tokenizer, cases: list[EditCase], methods: list[str], settings: dict[str, dict] | None = None,
              shown: int = 2, progress: bool = True) -> tuple[list[dict], list[dict], object]:
    """Each method makes every edit, answers every portability question of the cases (greedy), and
    is detached. Returns (shares, answers, the model as loaded). shares: {"method", "outcome",
    "value"}, the share of questions per `HOP_OUTCOMES`; answers: the first `shown` questions per
    method, {"method", "question", "new", "before", "answer", "outcome"}."""
    settings = FAST_SETTINGS if settings is None else settings
    probes = [(c, q, a) for c in cases for q, a in c.portability]
    if not probes:
        raise ValueError("these cases have no portability questions: pass cases whose `portability` is filled "
                         "(the bundled teaching cases, KnowEdit ZsRE)")
    questions = [q for _, q, _ in probes]
    before, model = _unedited(model, tokenizer, questions)
    shares, shown_answers = [], []
    for name in tqdm(methods, desc="portability questions, per method", disable=not progress):
        editor = METHODS[name](model, tokenizer, **settings.get(name, {}))
        editor.edit(cases)
        answers = editor.generate(questions, ANSWER_TOKENS)
        got = [hop_outcome(a, new, c.target_new, b) for a, (c, _, new), b in zip(answers, probes, before)]
        shares += [{"method": name, "outcome": o, "value": got.count(o) / len(got)} for o in HOP_OUTCOMES]
        shown_answers += [{"method": name, "question": q, "new": new, "before": b.strip(), "answer": a.strip(), "outcome": o}
                          for (_, q, new), b, a, o in list(zip(probes, before, answers, got))[:shown]]
        model = editor.detach()
    return shares, shown_answers, model


def encoder_fits(cases: list[EditCase], encoder=None) -> list[EditCase]:
    """The cases whose knowledge sentence (prompt + target_new) fits RECIPE's encoder: it refuses
    text longer than ENCODER_MAX_TOKENS MiniLM tokens rather than cut it."""
    encoder = encoder if encoder is not None else load_encoder()
    lengths = [len(ids) for ids in encoder.tokenizer([c.descriptor for c in cases])["input_ids"]]
    return [c for c, n in zip(cases, lengths) if n <= ENCODER_MAX_TOKENS]


def long_form(model, tokenizer, cases: list[EditCase], methods: list[str], settings: dict[str, dict] | None = None,
              shown: int = 2, progress: bool = True) -> tuple[list[dict], list[dict], object]:
    """Each method makes every edit (prompt: a passage; target_new: the sentence that should follow
    it), then continues every passage and answers every locality question; then it is detached.

    Returns (rows, answers, the model as loaded). rows: {"method", "measure", "value"} per
    LONG_MEASURES: "token accuracy" (teacher-forced share of the sentence's tokens, KnowEdit's
    WikiBio score), "sentence recall" (`word_recall` of a greedy continuation as long as the
    sentence) and "locality" (share of locality questions whose greedy answer is unchanged).
    answers: the first `shown` passages per method, {"method", "passage", "target", "answer", "recall"}.
    """
    settings = FAST_SETTINGS if settings is None else settings
    passages, sentences = [c.prompt for c in cases], [c.target_new for c in cases]
    budgets = [len(tokenizer(t, add_special_tokens=False).input_ids) for t in sentences]
    questions = [q for c in cases for q, _ in c.locality]
    if not questions:
        raise ValueError("these cases have no locality questions: pass KnowEdit WikiBio cases (load_wikibio)")
    before, model = _unedited(model, tokenizer, questions)
    rows, shown_answers = [], []
    for name in tqdm(methods, desc="passage -> new sentence, per method", disable=not progress):
        editor = METHODS[name](model, tokenizer, **settings.get(name, {}))
        editor.edit(cases)
        accuracy = [s.token_acc for s in editor.score(passages, sentences)]
        answers = [a.strip() for a in editor.generate(passages, budgets)]
        recall = [word_recall(a, t) for a, t in zip(answers, sentences)]
        kept = [a == b for a, b in zip(editor.generate(questions, ANSWER_TOKENS), before)]
        for measure, values in zip(LONG_MEASURES, (accuracy, recall, kept)):
            rows.append({"method": name, "measure": measure, "value": sum(values) / len(values)})
        shown_answers += [{"method": name, "passage": p, "target": t, "answer": a, "recall": r}
                          for p, t, a, r in list(zip(passages, sentences, answers, recall))[:shown]]
        model = editor.detach()
    return rows, shown_answers, model
