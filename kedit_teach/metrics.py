"""Scoring a model on (prompt, target) pairs under two protocols, plus fluency.

Protocols (every number the course shows is labelled with one of these):
- "teacher_forced": feed prompt + gold target, take the argmax at each target position.
  `token_acc` is the mean over target tokens (the KnowEdit/EasyEdit number in the papers' tables);
  `exact` is 1 only if every target token is the argmax (the deck's E[1{argmax_y f(y|x*) = y*}]).
- "generation": greedy decoding of len(target tokens) + 5 tokens; a match if the normalised output
  starts with the normalised target. This is what a user sees from `generate()`.

Everything is batched: one forward pass per batch, and the 262k-way output layer runs only at the
scored positions. The target is always tokenised as a continuation of the prompt (`encode_pair`).

Both protocols take optional `prefixes`: per row, a few vectors in the input-embedding space that go
in right after <bos> (RECIPE's continuous prompts). They enter through `inputs_embeds`, and the
attention mask and padding are rebuilt around them, so left-padded generation with a KV cache and
right-padded scoring stay consistent (`splice_prefixes`). Generation can also drop a row's vectors
once it has said a given text (`until`): the row then goes on from its words alone.

What it does not do: decide what text reaches the model (editors do, via `format_prompt` and their
own context), or aggregate results per metric (see `evaluate.py`).
"""
from __future__ import annotations

import contextlib
import math
import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria

from .models import decoder_of, encode_pair, encode_prompts, hidden_states, logits_at

PROTOCOLS = ("teacher_forced", "teacher_forced_exact", "generation")

# Called with each batch's key positions (the last prompt token of every row) and used as a context
# manager around that batch's forward pass: how a codebook editor (GRACE) knows where to look up.
BatchHook = Callable[[torch.Tensor], contextlib.AbstractContextManager]


def _no_hook(key_positions: torch.Tensor) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


@dataclass
class TokenScore:
    """Teacher-forced result for one (prompt, target): the target ids and the model's argmax ids."""
    target_ids: list[int]
    pred_ids: list[int]

    @property
    def token_acc(self) -> float:
        return sum(p == t for p, t in zip(self.pred_ids, self.target_ids)) / len(self.target_ids)

    @property
    def exact(self) -> float:
        return float(self.pred_ids == self.target_ids)

    def agreement(self, reference: "TokenScore") -> float:
        """Fraction of positions where this argmax equals a reference argmax (locality, papers' form)."""
        return sum(p == r for p, r in zip(self.pred_ids, reference.pred_ids)) / len(self.pred_ids)


def _batches(n: int, size: int, desc: str | None):
    starts = range(0, n, size)
    return tqdm(starts, desc=desc, leave=False) if desc and n > size else starts


@dataclass
class TargetBatch:
    """Prompt+target sequences, right-padded, with the (row, col) of every target prediction."""
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    target_ids: list[list[int]]
    prompt_lens: torch.Tensor

    @property
    def key_positions(self) -> torch.Tensor:
        """The last prompt token of each row: where an edit's key is read, never a target token."""
        return self.prompt_lens - 1

    @property
    def gold(self) -> torch.Tensor:
        return torch.tensor([t for y in self.target_ids for t in y])


def pack_targets(tokenizer, texts: list[str], targets: list[str]) -> TargetBatch:
    if len(texts) != len(targets):
        raise ValueError(f"{len(texts)} prompts but {len(targets)} targets: pass one target per prompt")
    pairs = [encode_pair(tokenizer, x, y) for x, y in zip(texts, targets)]
    # The last target token is never an input: nothing is predicted after it.
    seqs = [p + y[:-1] for p, y in pairs]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(seqs):  # right padding keeps position ids 0..len-1 for every row
        ids[r, :len(s)], mask[r, :len(s)] = torch.tensor(s), 1
    rows = torch.tensor([r for r, (p, y) in enumerate(pairs) for _ in y])
    cols = torch.tensor([len(p) - 1 + j for p, y in pairs for j in range(len(y))])
    return TargetBatch(ids, mask, rows, cols, [y for _, y in pairs], torch.tensor([len(p) for p, _ in pairs]))


# One optional [n_vectors, hidden] tensor per row, or None for a row that gets nothing.
Prefixes = list[torch.Tensor | None]


def splice_prefixes(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefixes: Prefixes,
                    left_pad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input embeddings with each row's prefix vectors inserted after its <bos> (or first, without one).

    Returns (inputs_embeds, attention_mask, inserted): the rows re-padded on the same side, and the
    number of vectors inserted per row. The vectors are used as given: they live in the space
    `embed_tokens` outputs, which on Gemma is already multiplied by sqrt(hidden). Differentiable.
    """
    embed = model.get_input_embeddings()
    bos = getattr(model.config, "bos_token_id", None)
    rows = []
    for ids, keep, prefix in zip(input_ids, attention_mask.bool(), prefixes):
        real = ids[keep].to(embed.weight.device)
        vectors = embed(real[None])[0]
        if prefix is not None and len(prefix):
            at = int(bos is not None and len(real) > 0 and int(real[0]) == bos)
            # <bos> stays first: Gemma and Llama attend to it as a sink, and a model never saw text before it.
            vectors = torch.cat([vectors[:at], prefix.to(vectors), vectors[at:]])
        rows.append(vectors)
    width = max(len(v) for v in rows)
    pads = [(width - len(v), 0) if left_pad else (0, width - len(v)) for v in rows]
    embeds = torch.stack([torch.nn.functional.pad(v, (0, 0, *p)) for v, p in zip(rows, pads)])
    mask = torch.stack([torch.nn.functional.pad(torch.ones(len(v), dtype=torch.long), p)
                        for v, p in zip(rows, pads)]).to(embeds.device)
    inserted = torch.tensor([0 if p is None else len(p) for p in prefixes])
    return embeds, mask, inserted


def target_logits(model, batch: TargetBatch, sliced: bool = True, prefixes: Prefixes | None = None) -> torch.Tensor:
    """Logits [n_target_tokens, vocab] at the target positions only (or via full logits)."""
    ids, mask = batch.input_ids.to(model.device), batch.attention_mask.to(model.device)
    inputs, cols = {"input_ids": ids, "attention_mask": mask}, batch.cols
    if prefixes is not None:
        embeds, mask, inserted = splice_prefixes(model, ids, mask, prefixes, left_pad=False)
        inputs, cols = {"inputs_embeds": embeds, "attention_mask": mask}, cols + inserted[batch.rows]
    if sliced:
        return logits_at(model, hidden_states(model, **inputs)[batch.rows, cols])
    return model(**inputs).logits[batch.rows, cols].float()


def nll(logits: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of gold token ids under logits [n, vocab]."""
    logp = torch.log_softmax(logits.float(), -1)
    return -logp.gather(1, gold.to(logp.device)[:, None]).mean()


def target_nll(model, tokenizer, texts: list[str], targets: list[str]) -> torch.Tensor:
    """Mean negative log-likelihood of the targets as continuations (differentiable; for training)."""
    batch = pack_targets(tokenizer, texts, targets)
    return nll(target_logits(model, batch), batch.gold)


@torch.no_grad()
def teacher_forced(model, tokenizer, texts: list[str], targets: list[str], batch_size: int = 16,
                   sliced: bool = True, desc: str | None = None,
                   on_batch: BatchHook = _no_hook, prefixes: Prefixes | None = None) -> list[TokenScore]:
    """Argmax predictions at every target position, given the formatted prompt and the gold prefix.

    sliced=False computes full logits at every position (what most reference code does); it is kept
    only so the benchmark can measure what slicing saves. Both give identical predictions.
    """
    results: list[TokenScore] = []
    for start in _batches(len(texts), batch_size, desc):
        batch = pack_targets(tokenizer, texts[start:start + batch_size], targets[start:start + batch_size])
        chunk = None if prefixes is None else prefixes[start:start + batch_size]
        with on_batch(batch.key_positions):
            preds = target_logits(model, batch, sliced, chunk).argmax(-1).tolist()
        k = 0
        for y in batch.target_ids:
            results.append(TokenScore(y, preds[k:k + len(y)]))
            k += len(y)
    return results


@torch.no_grad()
def perplexity(model, tokenizer, text: str) -> float:
    """exp(mean next-token NLL) of `text` under the model as it is now: a general-ability check that
    rises as weight edits wear the model out (RECIPE's Table 2 measures general ability on benchmarks)."""
    enc = tokenizer(text, return_tensors="pt").to(model.device)
    gold, total = enc.input_ids[0, 1:], 0.0
    with torch.no_grad():
        hidden = decoder_of(model)(**enc, use_cache=False).last_hidden_state[0, :-1]
        for i in range(0, len(gold), 256):  # 256 rows of 262k logits at a time, not a 2 GB block
            logits = logits_at(model, hidden[i:i + 256]).float()
            total += float(torch.nn.functional.cross_entropy(logits, gold[i:i + 256], reduction="sum"))
    return math.exp(total / len(gold))


def next_token_probs(model, tokenizer, text: str, k: int = 10) -> list[tuple[str, float]]:
    """The k most likely next tokens after one formatted text, most likely first, with their
    probabilities under a softmax over the whole vocabulary. Greedy decoding picks the first."""
    enc = encode_prompts(tokenizer, [text], model.device)
    last = hidden_states(model, enc["input_ids"], enc["attention_mask"])[0, -1]
    top = logits_at(model, last).softmax(-1).topk(k)
    return [(tokenizer.decode([i]), p) for i, p in zip(top.indices.tolist(), top.values.tolist())]


class _Said(StoppingCriteria):
    """A stopping rule for `model.generate`: row r stops once its new text says `texts[r]`
    (`says`); `steps[r]` records how many tokens it had then. Rows without a text never stop."""

    def __init__(self, tokenizer, texts: list[str | None], skip: int):
        self.tokenizer, self.texts, self.skip = tokenizer, texts, skip
        self.steps: list[int | None] = [None] * len(texts)

    def __call__(self, input_ids: torch.Tensor, scores, **kw) -> torch.Tensor:
        new = input_ids[:, self.skip:]
        for r, text in enumerate(self.texts):
            if text is not None and self.steps[r] is None and says(
                    self.tokenizer.decode(new[r], skip_special_tokens=True), text):
                self.steps[r] = new.shape[1]
        return torch.tensor([s is not None for s in self.steps], device=input_ids.device)


@torch.no_grad()
def generate_greedy(model, tokenizer, texts: list[str], max_new_tokens: int | list[int],
                    batch_size: int = 16, desc: str | None = None,
                    on_batch: BatchHook = _no_hook, prefixes: Prefixes | None = None,
                    until: list[str | None] | None = None, going_on: dict[int, int] | None = None) -> list[str]:
    """Greedy continuations (new text only) of formatted prompts, batched with left padding.

    max_new_tokens may differ per prompt; a batch decodes to its longest and each row is cut back.
    With prefixes the prompt goes in as `inputs_embeds` (the prefill); later steps use the KV cache.
    until: per row, a text after which its prefix is dropped. Once the row has said it, the prompt
    and the words so far are decoded on as plain text, for the rest of the row's budget: the vectors
    did their work, and from there the model writes as it would after those words.
    going_on: a dict that gets {row: tokens left} of the rows that said their `until` text early;
    given one, those rows are not decoded on here: the caller decodes `texts[row] + output` on, in
    batches with other plain-text rows rather than in a call of their own (`Editor.generate`).
    """
    budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(texts)
    outputs: list[str] = []
    left: dict[int, int] = {}  # row -> tokens left, for rows that said their `until` text early
    for start in _batches(len(texts), batch_size, desc):
        chunk, budget = texts[start:start + batch_size], budgets[start:start + batch_size]
        enc = encode_prompts(tokenizer, chunk, model.device)
        width = enc["input_ids"].shape[1]
        inputs, skip = dict(enc), width  # generate() returns the prompt ids, then the new ones
        if prefixes is not None:
            embeds, mask, _ = splice_prefixes(model, enc["input_ids"], enc["attention_mask"],
                                              prefixes[start:start + batch_size], left_pad=True)
            inputs, skip = {"inputs_embeds": embeds, "attention_mask": mask}, 0  # from embeddings: new ones only
        said = None if prefixes is None or until is None else _Said(tokenizer, until[start:start + batch_size], skip)
        with on_batch(torch.full((len(chunk),), width - 1)):  # left padding: prompts end at the last column
            out = model.generate(**inputs, max_new_tokens=max(budget), do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, stopping_criteria=[said] if said else None)
        new = out[:, skip:]
        outputs += [tokenizer.decode(row[:b], skip_special_tokens=True) for row, b in zip(new, budget)]
        if said:
            left |= {start + r: b - s for r, (s, b) in enumerate(zip(said.steps, budget)) if s is not None and s < b}
    if going_on is not None:
        going_on.update(left)
    elif left:
        rest = generate_greedy(model, tokenizer, [texts[i] + outputs[i] for i in left], list(left.values()),
                               batch_size, on_batch=on_batch)
        for i, more in zip(left, rest):
            outputs[i] += more
    return outputs


def target_budget(tokenizer, texts: list[str], targets: list[str], slack: int = 5) -> list[int]:
    """len(target tokens) + slack new tokens per prompt: enough to say the answer, not to ramble."""
    return [len(encode_pair(tokenizer, x, y)[1]) + slack for x, y in zip(texts, targets)]


_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize(text: str) -> str:
    """Fold case, punctuation and whitespace, so "  Rome, Italy" and "rome italy" compare equal."""
    return " ".join(text.lower().translate(_PUNCT).split())


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """ "1 edit", "3 edits"; `nouns` where the plural is not noun + "s" ("entry", "entries")."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def says(text: str, answer: str) -> bool:
    """Whether `text` says `answer` as whole words, case and punctuation folded ("... in Rome, the"
    says "Rome"; "Romania" does not)."""
    said = normalize(answer)
    return bool(said) and f" {said} " in f" {normalize(text)} "


def said_after(text: str, first: str, then: str) -> bool:
    """Whether `text` says `then` after it has said `first` (both as whole words, as in `says`)."""
    folded, said = f" {normalize(text)} ", f" {normalize(first)} "
    at = folded.find(said) if said.strip() else -1
    return at >= 0 and says(folded[at + len(said) - 1:], then)


def generation_match(output: str, target: str) -> float:
    """1.0 if the normalised output starts with the normalised target."""
    tgt = normalize(target)
    return float(bool(tgt) and normalize(output).startswith(tgt))


_CLAUSE_END = re.compile(r"[.,;:!?](?=\s|$)|\n")  # "3.5" and "1,000" go on; "Tokyo, and" stops


def first_phrase(text: str) -> list[str]:
    """The words of an answer up to its first clause boundary (a comma, full stop, colon, semicolon,
    ? or ! before a space, or a line break), case and punctuation folded (`metrics.normalize`)."""
    return normalize(_CLAUSE_END.split(re.sub(r"^\W+", "", text), maxsplit=1)[0]).split()


def same_answer(answer: str, expected: str) -> bool:
    """Whether a student would call `answer` the same answer as `expected`: their first phrases
    agree word for word as far as the shorter goes. "Tokyo. It is the largest" and "Tokyo, and the
    capital of" agree (Tokyo); "Rome, Italy" and "Paris" do not, nor do "Romeo and" and "Rome".
    A plain prefix test on the whole text called the first pair different: neither continuation
    starts with the other."""
    mine, theirs = first_phrase(answer), first_phrase(expected)
    n = min(len(mine), len(theirs))
    return n > 0 and mine[:n] == theirs[:n]


def word_recall(output: str, target: str) -> float:
    """ROUGE-L recall over normalised words: the share of the target's words that the output
    reproduces in order (their longest common subsequence). For sentence-long targets, where
    `generation_match`'s whole-prefix test would call one changed word a miss."""
    out, tgt = normalize(output).split(), normalize(target).split()
    if not tgt:
        return 0.0
    row = [0] * (len(out) + 1)  # LCS lengths of tgt[:i] against every prefix of out
    for t in tgt:
        prev_diag, row[0] = 0, 0
        for j, o in enumerate(out, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if o == t else max(row[j], row[j - 1])
    return row[-1] / len(tgt)


def ngram_entropy(text: str, ns=(2, 3), weights=(2 / 3, 4 / 3)) -> float:
    """Weighted 2-/3-gram entropy in bits (ROME's fluency); repetitive text scores low."""
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    values = []
    for n, w in zip(ns, weights):
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        h = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        values.append(w * h)
    return sum(values) / len(values)


def repetition(text: str, n: int = 3) -> float:
    """The share of word n-grams that repeat an earlier one in the text: 0 for text that never
    repeats itself, near 1 for a loop ("Sydney Sydney is a city and a city and a city")."""
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0
