"""SERAC's scope classifier (Mitchell et al., ICML 2022, Sec. 3.1): is a query about a stored edit?

    g(e, q) = sigmoid(s * cos(h(e), h(q)) + b)        in scope if g > 0.5 (the reference's threshold)

h is MiniLM's sentence embedding (mean-pooled, normalised) with its top layer(s) fine-tuned, and
e the edit as text, "prompt target_new" (the reference's "input [SEP] label"). This is the
reference's *embedding* classifier, the one it runs for question answering: an edit is embedded
once when it is stored, and a query costs one MiniLM pass and a dot product per stored edit. Its
cross-attention classifier runs the encoder once per (query, edit) pair: 1,000 passes a query with
1,000 edits stored, seconds on a CPU. The reference scores embeddings by a negative squared
distance with a fixed scale; MiniLM was trained for cosine, so here the cosine gets a learned scale
s and bias b, and g is a probability the 0.5 threshold can read.

Training (`train_classifier`, the reference's balanced binary cross-entropy): on a batch of edits,
positives are each edit's prompt and rephrasing with their own edit; hard negatives are the
edit's locality prompts beside it (the reference's only negatives; KnowEdit's and the teaching
set's ask about the same subject); and every other pair in the batch is a negative too. Each of
the three is a mean of its own: with the in-batch negatives in one mean with the hard ones, the
hard ones weighed 1 in 250 and the classifier, after 100 steps, let every ZsRE locality prompt
into scope (own edit found for 0.94 of the edit prompts, locality right 0.00). Same data, split
and held-out subjects as RECIPE (`prompt_learning.training_examples`). Only the top layer(s) train,
over the lower layers' states computed once per text (`encoder_layers`).

What it does not do: store edits or answer queries (see editors/serac.py).
"""
from __future__ import annotations

import copy
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .alignment import (check_run, fingerprint, load_trained_state, read_trained_record, run_record, save_trained,
                        shuffled_batches, yours_or_shipped)
from .data import ASSETS
from .encoder_layers import lower_states, tokenize, top_pass
from .errors import UsageError
from .models import DEFAULT_ENCODER, cache_dir, load_encoder
from .prompt_learning import TrainingExample, trace_encoder

SHIPPED = ASSETS / "serac"
WEIGHTS_FILE, RECORD_FILE = "classifier.safetensors", "record.json"


class ClassifierError(UsageError, ValueError):
    """A saved classifier that can't be used; the message names the file, the field and the fix."""


@dataclass
class ScopeConfig:
    encoder: str = DEFAULT_ENCODER
    top_layers: int = 1     # MiniLM's top layers that train (1: 1.8M weights, 7 MB)
    threshold: float = 0.5  # in scope above this probability (the reference's)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MiniLM's own sentence embedding: the mean over real tokens, normalised."""
    m = mask[..., None].to(hidden.dtype)
    return F.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)


class ScopeClassifier(nn.Module):
    def __init__(self, config: ScopeConfig | None = None, encoder=None):
        """encoder: a loaded SentenceTransformer of config.encoder (default: load it). The
        classifier trains its own copy, so a shared encoder (LTE's, RECIPE's) stays as it was."""
        super().__init__()
        self.config = config or ScopeConfig()
        st = encoder if encoder is not None else load_encoder(self.config.encoder)
        self.tokenizer = st.tokenizer
        self.encoder = copy.deepcopy(st[0].auto_model).requires_grad_(False).eval()
        layers = len(self.encoder.encoder.layer)
        if not 0 < self.config.top_layers <= layers:
            raise ValueError(f"top_layers={self.config.top_layers}: MiniLM has {layers} layers; pick 1 to {layers}")
        self.top.requires_grad_(True)
        # at the start a cosine of 0.6 is the 0.5 boundary: MiniLM's own rephrasings sit above it
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = nn.Parameter(torch.tensor(-6.0))

    def train(self, mode: bool = True) -> "ScopeClassifier":
        super().train(mode)
        self.encoder.eval()  # no dropout: the top layers train on cached, dropout-free states
        return self

    @property
    def top(self) -> nn.ModuleList:
        return self.encoder.encoder.layer[-self.config.top_layers:]

    def tokens(self, texts: list[str], what: str = "text") -> dict:
        return tokenize(self.tokenizer, texts, what)

    def traced(self):
        """MiniLM as a TorchScript trace sharing the trained weights, made once (0.3 s on CPU)."""
        if "_trace" not in self.__dict__:  # a plain attribute: out of state_dict and the fingerprint
            self.__dict__["_trace"] = trace_encoder(self.encoder, self.tokenizer, half=False)
        return self.__dict__["_trace"]

    def embed(self, texts: list[str], what: str = "text") -> torch.Tensor:
        """h(texts): [n, 384], unit length. One traced MiniLM pass, without gradients."""
        enc = self.tokens(texts, what)
        with torch.no_grad():
            hidden = self.traced()(enc["input_ids"], enc["attention_mask"])["last_hidden_state"]
        return mean_pool(hidden.float(), enc["attention_mask"])

    def logits(self, queries: torch.Tensor, edits: torch.Tensor) -> torch.Tensor:
        """s cos + b for every (query, edit) pair: [n_queries, n_edits]."""
        return self.log_scale.exp() * queries @ edits.T + self.bias

    def probability(self, queries: torch.Tensor, edits: torch.Tensor) -> torch.Tensor:
        return self.probability_of(queries @ edits.T)

    def probability_of(self, cosine: torch.Tensor) -> torch.Tensor:
        """g for cosines already computed (the editor's memory search returns them)."""
        return torch.sigmoid(self.log_scale.exp() * cosine + self.bias)

    # ------------------------------------------------------------------ training on cached states
    def lower_states(self, texts: list[str]) -> list[torch.Tensor]:
        return lower_states(self.encoder, self.tokens(texts), self.config.top_layers)

    def top_embed(self, states: list[torch.Tensor]) -> torch.Tensor:
        """h from `lower_states`, through the trained layers (with gradients)."""
        return top_pass(self.top, states, mean_pool)

    # ------------------------------------------------------------------ persistence
    def trained_state(self) -> dict[str, torch.Tensor]:
        layers = len(self.encoder.encoder.layer)
        top = tuple(f"encoder.encoder.layer.{i}." for i in range(layers - self.config.top_layers, layers))
        return {k: v.detach().float().contiguous() for k, v in self.state_dict().items()
                if not k.startswith("encoder.") or k.startswith(top)}

    def fingerprint(self) -> str:
        return fingerprint(self.trained_state())


def in_scope_of(probabilities: list[float], threshold: float = 0.5) -> int | None:
    """The decision (Sec. 3.1): the index of the stored edit most likely in scope, if its
    probability is above the threshold; None, and the base model answers, otherwise."""
    if not len(probabilities):
        return None
    j = max(range(len(probabilities)), key=lambda i: probabilities[i])
    return j if probabilities[j] > threshold else None


# ----------------------------------------------------------------------------- training

@dataclass
class ScopeTrainConfig:
    steps: int = 1000
    batch_size: int = 128      # edits per step; every other edit in the batch is a negative
    lr: float = 1e-2           # s and b
    encoder_lr: float = 5e-5   # the trained MiniLM layers
    seed: int = 0


def balanced_bce(logits: torch.Tensor, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Balanced BCE (the reference's, with a third part): the mean loss over positives, over hard
    negatives and over the other negatives, so that neither the few positives nor the few hard
    negatives drown in the in-batch ones. `masks` as from `pair_labels`; ignored pairs count nowhere."""
    loss = F.binary_cross_entropy_with_logits(logits, masks["labels"].float(), reduction="none")
    kept = ~masks["ignore"]
    easy = ~masks["labels"] & ~masks["hard"] & kept
    return {"pos": loss[masks["labels"] & kept].mean(), "hard": loss[masks["hard"]].mean(), "neg": loss[easy].mean()}


def pair_labels(batch: list[TrainingExample]) -> tuple[list[str], list[str], dict[str, torch.Tensor]]:
    """(edit texts, queries, masks [queries, edits]) for a batch. "labels": each edit's prompt and
    rephrasing are positives for it alone; everything else is a negative, its locality prompts
    too. "hard": a locality prompt beside its own edit. "ignore": a query that is also another
    edit's own prompt or rephrasing (two edits of one question), a positive for that one."""
    edits = [e.knowledge for e in batch]
    queries, owner, local = [], [], []
    for i, e in enumerate(batch):
        for q in (e.q_e, e.q_g):
            queries.append(q), owner.append(i), local.append(False)
        for q in (e.q_l, *e.more_locality):
            queries.append(q), owner.append(i), local.append(True)
    owner_t, local_t = torch.tensor(owner), torch.tensor(local)
    own = owner_t[:, None] == torch.arange(len(batch))[None]
    labels = own & ~local_t[:, None]
    asked = torch.tensor([[q in (e.q_e, e.q_g) for e in batch] for q in queries])
    return edits, queries, {"labels": labels, "hard": own & local_t[:, None], "ignore": asked & ~labels}


def train_classifier(clf: ScopeClassifier, examples: list[TrainingExample], cfg: ScopeTrainConfig | None = None,
                     progress: bool = True, callback: Callable[[int, dict], None] | None = None, every: int = 100,
                     start: int = 0) -> dict[str, list[float]]:
    """Balanced BCE over in-batch pairs (see the module docstring). Returns the loss curves per step
    (loss and its parts pos, hard, neg; p_hard: the mean probability of a locality prompt beside its own edit).
    callback(step, curves) every `every` steps (checkpoints); start: steps a stopped run already did."""
    cfg = cfg or ScopeTrainConfig()
    check_run(len(examples), cfg.batch_size, start, cfg.steps)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.Adam([{"params": [clf.log_scale, clf.bias], "lr": cfg.lr},
                            {"params": list(clf.top.parameters()), "lr": cfg.encoder_lr}])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(cfg.steps - start - s, 0) / cfg.steps)
    texts = list(dict.fromkeys(t for e in examples for t in (e.knowledge, e.q_e, e.q_g, e.q_l, *e.more_locality)))
    states: dict[str, torch.Tensor] = {}
    for i in tqdm(range(0, len(texts), 256), desc="MiniLM's lower layers (once)", disable=not progress or len(texts) <= 256):
        states.update(zip(texts[i:i + 256], clf.lower_states(texts[i:i + 256])))
    batches = shuffled_batches(len(examples), cfg.batch_size, random.Random(cfg.seed + start))
    curves: dict[str, list[float]] = {k: [] for k in ("loss", "pos", "hard", "neg", "p_hard")}
    clf.train()
    bar = tqdm(range(start, cfg.steps), desc="SERAC classifier", disable=not progress, initial=start, total=cfg.steps)
    try:
        for step in bar:
            batch = [examples[i] for i in next(batches)]
            edit_texts, queries, masks = pair_labels(batch)
            h = clf.top_embed([states[t] for t in edit_texts + queries])
            logits = clf.logits(h[len(edit_texts):], h[:len(edit_texts)])
            parts = balanced_bce(logits, masks)
            loss = sum(parts.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            curves["loss"].append(loss.item())
            for k, v in parts.items():
                curves[k].append(v.item())
            curves["p_hard"].append(torch.sigmoid(logits[masks["hard"]]).mean().item())
            bar.set_postfix({k: f"{sum(v[-20:]) / len(v[-20:]):.3f}" for k, v in curves.items()})
            if callback is not None and (step + 1) % every == 0:
                clf.eval()
                callback(step + 1, curves)
                clf.train()
    finally:
        clf.eval()
    return curves


# ----------------------------------------------------------------------------- saved classifiers

def trained_path() -> Path:
    """Where `train serac` writes by default: the user's cache, never the installed package."""
    return cache_dir() / "serac" / "classifier"


def default_path() -> Path:
    """The classifier SERAC(classifier="default") loads: yours, else the shipped one. It does not
    depend on the LLM: it reads only text."""
    return yours_or_shipped(trained_path(), SHIPPED, WEIGHTS_FILE)


def make_record(clf: ScopeClassifier, cfg: ScopeTrainConfig, data: dict, curves: dict[str, list[float]],
                seconds: float) -> dict:
    return run_record({"classifier": asdict(clf.config), "train": asdict(cfg)}, data, curves, seconds)


def save_classifier(clf: ScopeClassifier, path: str | Path, record: dict) -> Path:
    return save_trained(clf, path, WEIGHTS_FILE, record)


def read_record(path: str | Path) -> dict:
    return read_trained_record(path, WEIGHTS_FILE, "classifier", ScopeConfig, ClassifierError,
                               "pass a folder written by `python -m kedit_teach train serac`",
                               "the classifier's settings", "the classifier")


def load_classifier(path: str | Path, encoder=None) -> tuple[ScopeClassifier, dict]:
    record = read_record(path)
    clf = ScopeClassifier(ScopeConfig(**record["classifier"]), encoder)
    load_trained_state(clf, path, WEIGHTS_FILE, "classifier", ClassifierError, "the classifier")
    return clf, record
