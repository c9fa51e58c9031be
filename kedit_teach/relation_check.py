"""RECIPE's relation check (not in the paper): does a query that names a stored edit's subject ask
about the edit's relation, or about another one?

With ZsRE's or the teaching set's edits stored, most of the sentinel's mistakes are queries about an
edited subject's *other* relations ("The Eiffel Tower was designed by the engineer" next to an edit of
"The Eiffel Tower is located in the city of"), or the right subject with another stored edit's
relation. Frozen MiniLM features are dominated by the subject: MLP_Q and MLP_K find the subject
and can't tell its relations apart. The check takes the subject out of both texts:

    rel(q, k) = sigmoid(s * cos(A f(q \\ subject), A f(prompt_k \\ subject)) + b)

f is f_rm pooled as RECIPE's modules pool it; q \\ subject is the query from its first sentence
that names the subject on, with the subject written as "X" (CounterFact's rephrasings open with an
unrelated sentence); A is a linear map, s and b a learned scale and bias. Among RECIPE's top hits whose
subject the query names (whole words, any case), the one with the highest rel is attached if
rel > threshold, and none otherwise. A query that names no hit's subject keeps the sentinel's
decision.

Training (`train_relation_check`, seconds on a CPU: f_rm is frozen and each text is encoded once):
binary cross-entropy on pairs from RECIPE's training data and split: a case's rephrasing with its
edit prompt (the same relation); each of its locality prompts that names its subject with its
edit prompt (another relation); and its edit prompt or rephrasing with the template of a case whose
kind of answer it never shares (another relation, `other_templates`). The threshold is chosen on
pairs whose edit-prompt template was kept out of training (a fifth of them): the threshold whose
worse rate there is best.

What it does not do: find a subject the query does not spell out (an alias, a pronoun); tell apart
two stored edits of one question with different answers (KnowEdit's ZsRE holds such pairs); vouch
for relations worded unlike anything in its training data (its "another" pairs come from ~200 cloze
templates and the cases' own locality prompts).
"""
from __future__ import annotations

import random
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .alignment import fingerprint, load_trained_state, read_trained_record, run_record, save_trained, yours_or_shipped
from .data import ASSETS
from .errors import UsageError
from .models import DEFAULT_ENCODER, cache_dir
from .prompt_learning import cached_features

SHIPPED = ASSETS / "relation_check"
WEIGHTS_FILE = "relation.safetensors"
PLACEHOLDER = "X"


class RelationCheckError(UsageError, ValueError):
    """A saved relation check that can't be used; the message names the file, the field and the fix."""


def _subject(subject: str) -> re.Pattern:
    return re.compile(r"(?<!\w)" + re.escape(subject) + r"(?!\w)", re.IGNORECASE)


def names(text: str, subject: str) -> bool:
    """Whether text spells out subject as whole words (any case)."""
    return bool(subject.strip()) and _subject(subject).search(text) is not None


def masked(text: str, subject: str) -> str:
    """text from its first sentence that names subject on, with the subject written as X."""
    sentences = re.split(r"(?<=[.!?])\s+", text)
    first = next((i for i, s in enumerate(sentences) if names(s, subject)), 0)
    return _subject(subject).sub(PLACEHOLDER, " ".join(sentences[first:]))


@dataclass
class RelationConfig:
    encoder: str = DEFAULT_ENCODER
    d_in: int = 3 * 384   # f_rm's pooled width ([mean; max; min] of MiniLM's 384)
    d: int = 256
    threshold: float = 0.5  # set by training, on templates it did not train on


class RelationHead(nn.Module):
    def __init__(self, config: RelationConfig | None = None, seed: int = 0):
        super().__init__()
        self.config = config or RelationConfig()
        torch.manual_seed(seed)
        self.proj = nn.Linear(self.config.d_in, self.config.d)  # A
        self.scale, self.bias = nn.Parameter(torch.tensor(10.0)), nn.Parameter(torch.tensor(-5.0))

    def forward(self, queries: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """Logits of rel for row-aligned pooled features [n, d_in]."""
        cos = (F.normalize(self.proj(queries), dim=-1) * F.normalize(self.proj(prompts), dim=-1)).sum(-1)
        return self.scale * cos + self.bias

    def trained_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone().contiguous() for k, v in self.state_dict().items()}

    def fingerprint(self) -> str:
        return fingerprint(self.trained_state())


def relation_pairs(examples, seed: int = 0) -> list[tuple[str, str, float]]:
    """(query, edit prompt, 1 for the same relation / 0 for another), subjects masked, from
    prompt_learning.TrainingExample's whose subject both texts name: each case's own pairs, and
    its pair with another template (`other_templates`)."""
    pairs = []
    for e in examples:
        if not names(e.q_e, e.subject):
            continue
        prompt = masked(e.q_e, e.subject)
        if names(e.q_g, e.subject):
            pairs.append((masked(e.q_g, e.subject), prompt, 1.0))
        pairs += [(masked(q, e.subject), prompt, 0.0) for q in (e.q_l, *e.more_locality)
                  if q != e.q_e and names(q, e.subject)]
    return pairs + other_templates(examples, seed)


MIN_TEMPLATE_EDITS = 10  # below this, two templates' answers miss each other by chance


def other_templates(examples, seed: int = 0) -> list[tuple[str, str, float]]:
    """Pairs of another relation across cases: a case's edit prompt or rephrasing with the template
    of another edit prompt whose new answers never meet its own (cities against languages, companies
    against instruments). A case's own locality prompts name only a few of its subject's other
    relations; without these pairs the check called "X is a famous" and "X was built by the ancient"
    the relation of "X is located in the city of". Only templates with MIN_TEMPLATE_EDITS edits or
    more take part (CounterFact's and KnowEdit's cloze templates, the teaching set's; ZsRE's
    questions are nearly all one-off), so "never meet" means another kind of answer."""
    by_template: dict[str, list] = {}
    for e in examples:
        if names(e.q_e, e.subject):
            by_template.setdefault(masked(e.q_e, e.subject), []).append(e)
    answers = {t: {e.a_e.lower() for e in es} for t, es in by_template.items() if len(es) >= MIN_TEMPLATE_EDITS}
    rng = random.Random(seed)
    pairs = []
    for t in sorted(answers):
        apart = [u for u in sorted(answers) if not answers[t] & answers[u]]
        for e in by_template[t] if apart else ():
            q = e.q_g if names(e.q_g, e.subject) and rng.random() < 0.5 else e.q_e
            pairs.append((masked(q, e.subject), rng.choice(apart), 0.0))
    return pairs


@dataclass
class RelationTrainConfig:
    steps: int = 1500
    batch_size: int = 512
    lr: float = 1e-3
    held_out_templates: float = 0.2  # share of edit-prompt templates the threshold is chosen on
    seed: int = 0


def rates(p: torch.Tensor, y: torch.Tensor, threshold: float) -> tuple[float, float]:
    """(same relation accepted, another relation refused) at a threshold on rel."""
    return float((p[y == 1] > threshold).float().mean()), float((p[y == 0] <= threshold).float().mean())


def held_out_template(prompt: str, share: float) -> bool:
    """Whether a masked edit prompt's template is kept out of training: by its hash, not a random
    draw, so the split doesn't move with the examples' order."""
    return zlib.crc32(prompt.encode()) % 1000 < 1000 * share


def train_relation_check(head: RelationHead, modules, examples, cfg: RelationTrainConfig | None = None) -> dict:
    """Train `head` on `examples` (TrainingExample's) over the f_rm of `modules` (RECIPE's
    RecipeModules), set its threshold on held-out templates; returns the run's curves and the
    held-out rates."""
    cfg = cfg or RelationTrainConfig()
    pairs = relation_pairs(examples, cfg.seed)
    if not pairs or not any(y for *_, y in pairs) or all(y for *_, y in pairs):
        raise ValueError(f"{len(pairs)} pairs from {len(examples)} examples: the relation check needs both "
                         "rephrasings and locality prompts that name the edited subject")
    held = [held_out_template(b, cfg.held_out_templates) for _, b, _ in pairs]
    cache: dict[str, torch.Tensor] = {}
    cached_features(modules, [t for a, b, _ in pairs for t in (a, b)], cache)  # each text encoded once
    fa = cached_features(modules, [a for a, _, _ in pairs], cache)
    fb = cached_features(modules, [b for _, b, _ in pairs], cache)
    y = torch.tensor([label for *_, label in pairs])
    train, val = torch.tensor([not h for h in held]), torch.tensor(held)
    rows = train.nonzero()[:, 0]
    positive = y[rows].sum()
    weight = (len(rows) - positive) / positive.clamp(min=1)  # the two kinds weigh alike
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    curve = []
    head.train()
    for _ in tqdm(range(cfg.steps), desc="relation check", leave=False):
        idx = rows[torch.randint(len(rows), (cfg.batch_size,), generator=gen)]
        loss = F.binary_cross_entropy_with_logits(head(fa[idx], fb[idx]), y[idx], pos_weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(loss.item())
    head.eval()
    with torch.no_grad():
        p = torch.sigmoid(head(fa[val], fb[val]))
    grid = [round(0.05 * i, 2) for i in range(1, 20)]
    best = max(grid, key=lambda t: (min(rates(p, y[val], t)), -abs(t - 0.5)))
    head.config.threshold = best
    same, other = rates(p, y[val], best)
    return {"curves": {"loss": curve}, "pairs": len(pairs), "held_out_pairs": int(val.sum()),
            "held_out": {"threshold": best, "same relation accepted": round(same, 4),
                         "another relation refused": round(other, 4)}}


def decide(head: RelationHead, features, queries: list[str],
           candidates: list[list[tuple[str, str, str]]]) -> list[tuple[str | None, float] | None]:
    """The check for a batch of queries, in one encoder pass (features(texts) -> [n, d_in]: f_rm
    pooled; RECIPE passes prompt_learning.cached_features over its cache). candidates[i]: (case_id,
    subject, edit prompt) of RECIPE's top hits for queries[i]. Per query: None if it names none of
    their subjects (the sentinel decides); else (the case_id to attach or None, the best rel)."""
    named = [[c for c in cs if names(q, c[1])] for q, cs in zip(queries, candidates)]
    texts = [masked(t, s) for q, cs in zip(queries, named) for _, s, prompt in cs for t in (q, prompt)]
    if not texts:
        return [None] * len(queries)
    with torch.inference_mode():
        f = features(texts)
        p = torch.sigmoid(head(f[0::2], f[1::2]))
    out = []
    for row in named:
        if not row:
            out.append(None)
            continue
        scores, p = p[:len(row)], p[len(row):]
        best = int(scores.argmax())
        score = float(scores[best])
        out.append(((row[best][0] if score > head.config.threshold else None), score))
    return out


# ----------------------------------------------------------------------------- saved checks
def trained_path() -> Path:
    """Where `train relation` writes by default: the user's cache, never the installed package."""
    return cache_dir() / "relation_check"


def default_path() -> Path:
    """The check RECIPE(relation_check=True) loads: yours, else the shipped one (it reads only text)."""
    return yours_or_shipped(trained_path(), SHIPPED, WEIGHTS_FILE)


def make_record(head: RelationHead, cfg: RelationTrainConfig, data: dict, result: dict, seconds: float) -> dict:
    record = run_record({"relation": asdict(head.config), "train": asdict(cfg)}, data, result["curves"], seconds)
    return {**record, "pairs": result["pairs"], "held_out_pairs": result["held_out_pairs"],
            "held_out": result["held_out"]}


def save_check(head: RelationHead, path: str | Path, record: dict) -> Path:
    return save_trained(head, path, WEIGHTS_FILE, record)


def load_check(path: str | Path) -> tuple[RelationHead, dict]:
    record = read_trained_record(path, WEIGHTS_FILE, "relation", RelationConfig, RelationCheckError,
                                 "pass a folder written by `python -m kedit_teach train relation`",
                                 "the check's settings", "the relation check")
    head = RelationHead(RelationConfig(**record["relation"]))
    load_trained_state(head, path, WEIGHTS_FILE, "relation", RelationCheckError, "the relation check")
    head.eval()
    return head, record
