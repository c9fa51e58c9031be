"""General ability after editing: the perplexity of a passage and accuracy on general questions.

RECIPE's Table 2 and LTE's "linguistic capability" tables ask whether editing wears the model out
beyond the facts it touched. Two checks, written for this course and shipped in assets/general/:
- the perplexity of a ~1,800-token passage of plain prose on everyday topics (bread, bees, tides,
  clocks, glass) that no edit set touches, under the editor's model as it stands between queries:
  weight edits (FT-L, ROME, MEMIT, AlphaEdit) move it; editors that act only on a query (ICE,
  LTE's retrieval and its adapter, GRACE's codebook away from its keys, RECIPE's prompts) leave it;
- accuracy on short completion questions ("The largest ocean on Earth is the" -> "Pacific"), asked
  through the editor under both protocols, so a retrieval editor that attaches an edit to an
  unrelated question loses points too. questions.jsonl keeps only those the unedited Gemma-3-270M
  answers correctly and whose prompt names no subject of an edit set (scripts/build_general_questions.py;
  the real test re-checks the first).

What it does not do: the papers' benchmark suites (MMLU and friends), which a 270M model can't pass.
"""
from __future__ import annotations

import json
from functools import lru_cache

from .data import ASSETS
from .evaluate import Probe, run_probes
from .metrics import generation_match, perplexity

FOLDER = ASSETS / "general"


@lru_cache(maxsize=None)
def passage() -> str:
    return (FOLDER / "passage.txt").read_text(encoding="utf-8").strip()


@lru_cache(maxsize=None)
def questions() -> tuple[tuple[str, str], ...]:
    """(prompt, answer) pairs."""
    rows = [json.loads(line) for line in (FOLDER / "questions.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return tuple((r["prompt"], r["answer"]) for r in rows)


def ask(editor, pairs=None, batch_size: int = 16) -> list[dict]:
    """Each question through the editor: {"prompt", "answer", "generated", "teacher_forced", "generation"}."""
    pairs = questions() if pairs is None else pairs
    probes = [Probe(f"general-{i}", "general", q, a) for i, (q, a) in enumerate(pairs)]
    scores, gens = run_probes(editor, probes, batch_size)
    return [{"prompt": p.prompt, "answer": p.target, "generated": g, "teacher_forced": s.token_acc,
             "generation": generation_match(g, p.target)} for p, s, g in zip(probes, scores, gens)]


def general_ability(editor, batch_size: int = 16) -> dict:
    """{"perplexity", "questions": {"teacher_forced", "generation"}, "n_questions", "wrong": the first
    five questions the editor now gets wrong (generation), with what it said}."""
    rows = ask(editor, batch_size=batch_size)
    mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    return {"perplexity": perplexity(editor.model, editor.tokenizer, passage()),
            "questions": {"teacher_forced": mean("teacher_forced"), "generation": mean("generation")},
            "n_questions": len(rows),
            "wrong": [{k: r[k] for k in ("prompt", "answer", "generated")} for r in rows if not r["generation"]][:5]}
