"""RECIPE's trained modules and their training (Chen et al., EMNLP 2024, Sec. 3).

The modules turn text into the two things RECIPE stores and looks up:

    f_rm       the sentence encoder (all-MiniLM-L6-v2 offline; the paper: RoBERTa-base). Its last
               layer is pooled as [mean; max; min] over the tokens (see `pool`).
    MLP_K      knowledge representation  r_k = MLP_K(f_rm(k))         (the retrieval key)
    MLP_Q      query representation      r~_q = MLP_Q(f_rm(q))        (separate weights)
    MLP_P      continuous prompt         p_k = f_resp(MLP_P(r_k))     n_prompt_tokens x hidden
    Theta      the Knowledge Sentinel: c trainable vectors fed into f_rm *below* its embedding layer,
               then pooled and mapped by MLP_K:  r_Theta = MLP_K(f_rm(Theta))

and the retrieval rule (the deck's "Dynamic Prompt Retrieval"): take the top-1 knowledge j and attach
p_kj only if r~_q . r_kj > r~_q . r_Theta. Scores are dot products / sqrt(d), as in the reference.

Training (`train_modules`) follows the paper's losses on batches of edits, each with an edit query
q_e, a generality query q_g and a locality query q_l:

    L_rel, L_gen  Eq. 10, 11: NLL of the answer given p_ki + embedded q_e (q_g), the LLM frozen.
                  Plain NLL as in the equations (the reference stops at p(label) > 1.2 x the runner-up).
    L_loc         Eq. 12: KL(f(q_l) || f^(p_ki + q_l)) over the locality answer's positions.
    L_pl          L_no + L_so with InfoNCE delta (the deck's prompt-learning loss).
    L_flu         not in the paper: KL(f(q_e a_e c) || f^(p_ki + q_e a_e c)) over the positions of c,
                  the unedited model's own continuation of "q_e a_e" (see `edit_loss`).
    L             L_edit + L_pl, with L_edit = L_rel + L_gen + lambda_loc L_loc + lambda_flu L_flu
                  (lambda_loc = 0.2; the paper: 1)

Choices, and why (each measured on CPU; the numbers are in RESULTS.md's RECIPE section):
- Pooling [mean; max; min]: MiniLM was trained for mean pooling, and max/min keep single salient
  tokens that the mean dilutes. Its BERT pooler is untrained, so the reference's [pooler] is dropped.
- d_rep = 256 instead of the reference's 4096 keeps the shipped weights at a few MB.
- f_rm is frozen by default: its features are computed once per text, so training on CPU spends
  its time in the LLM; `finetune_encoder=True` fine-tunes a copy, as the reference does.
- Keys and queries carry the encoder's own cosine similarity (`Representation`, `encoder_prior`).
- Prompts are learned as a residual on the LLM's embeddings of the answer (`PromptGenerator`,
  `answer_anchor`), on the sphere where Gemma's token embeddings live (their norm after the
  sqrt(hidden) scaling, ~26 for Gemma-3-270M), times a learned gain per prompt token.
- The contrastive batch is larger than the edit batch (`TrainConfig.contrastive_batch`) and L_edit
  runs on every k-th step (`edit_every`): InfoNCE costs nothing next to an LLM pass, and more
  negatives train the sentinel against more look-alikes, which is what it faces with 1,000 edits.
- L_loc weighs 0.2 (`TrainConfig.loc_weight`), not 1. It asks a prompt to leave an unrelated query
  alone *when it is attached to it*, and CounterFact's locality queries share the edit's relation
  ("Michel Rocard is a native speaker of" next to an edit about another French speaker's language):
  three vectors in front of a frozen 270M model can't carry "English, but only for Danielle
  Darrieux". At weight 1 the prompts gave up reliability for it and still overrode such queries
  (200 held-out CounterFact edits, own prompt attached: reliability 0.87, the locality query's
  answer kept 0.155 of the time); 100 more MLP_P steps at 0.2 gave 0.99 and 0.025, at 0 1.00 and
  0.00, and the shipped third run (400 steps at 0.2) 1.00 and 0.005. Locality is the sentinel's
  work: an unrelated query gets no prompt at all.
- The training data holds every form a student writes (`default_sources`): cloze statements
  (CounterFact, KnowEdit's train_cf and recent_train), questions (KnowEdit ZsRE's training part,
  `data.ZSRE_SPLIT`) and the teaching set's training cases. Modules trained on statements alone
  found the right knowledge for ZsRE questions but their prompts did not answer them.
- More negatives for the sentinel, for almost nothing on a CPU (`bench_recipe options` measures
  each): a memory bank of other edits' keys in every InfoNCE denominator (`TrainConfig.bank`; f_rm
  is frozen and its features cached, so the bank's keys are recomputed by the current MLP_K, never
  stale as in a MoCo queue); batches mined so that each edit sits beside its nearest look-alikes
  by the encoder's cosine, same relation or similar subject (`neighbours`); and every locality
  prompt of a case sent to the sentinel, not only the first (`TrainingExample.more_locality`):
  KnowEdit's and the teaching set's ask about the edited subject's other relations.
- L_flu: a prompt built on the answer's embeddings keeps pulling towards the answer after it has
  been said ("Sydney, Australia. Sydney Sydney is a city"). Past the answer, the prompted model is
  asked to predict what the unedited model predicts after the same words.
- f_rm's top layer can be fine-tuned for the queries alone (`ModuleConfig.query_layers`,
  `TrainConfig.queries_only`, `train recipe --query-layers 1 --queries-only`): it trains over the
  lower layers' cached states, and keys and prompts stay. An option, off by default: from the
  shipped modules, 300 steps halved its training losses and left the held-out sentinel where it was.
- Further runs can train MLP_P alone (`TrainConfig.prompt_learning=False`, `train recipe --resume
  --prompts-only`): L_edit at every step, keys, queries and the sentinel untouched. The retrieval
  part has had many more steps than the prompts by then, and on held-out edits every reliability
  miss came with the right prompt attached.
- Prompts can be widened for such a run (`train recipe --resume ... --prompt-tokens 6`): three
  vectors carry a ZsRE answer's first three tokens, not the rest; six, after 600 steps, lifted ZsRE's
  held-out reliability from 0.80 to 0.87 (teacher-forced) and 0.56 to 0.68 (generated).

What it does not do: store edits or run the LLM at inference (see editors/recipe.py).
"""
from __future__ import annotations

import copy
import json
import math
import random
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .alignment import (check_run, fingerprint, load_trained_state, read_trained_record, run_record, save_trained,
                        shuffled_batches, yours_or_shipped)
from .data import (ASSETS, SHARED_DIR, ZSRE_FILE, EditCase, disjoint_subjects, dropping_quietly, load_cases, load_teach,
                   split_record)
from .encoder_layers import lower_states, tokenize, top_pass
from .errors import UsageError
from .metrics import generate_greedy, nll, pack_targets, target_logits
from .models import (DEFAULT_ENCODER, cache_dir, continuation, cpu_autocast, encode_pair, fast_bf16, format_prompt,
                     load_encoder, model_folder)

SHIPPED = ASSETS / "recipe"
WEIGHTS_FILE, RECORD_FILE = "modules.safetensors", "record.json"
TEACH_HELD_OUT = 64       # the first bundled cases are evaluation cases (notebooks); the rest may train


class ModuleError(UsageError, ValueError):
    """Saved modules that can't be used; the message names the file, the field and the fix."""


@dataclass
class ModuleConfig:
    """The shape of the modules. hidden_size and model_type pin them to one LLM."""
    hidden_size: int
    model_type: str
    d_rep: int = 256
    n_prompt_tokens: int = 3
    n_sentinel: int = 10
    finetune_encoder: bool = False
    encoder: str = DEFAULT_ENCODER
    answer_anchor: bool = True  # build prompts on the answer's LLM embeddings (see PromptGenerator)
    encoder_prior: bool = True  # keys and queries carry the encoder's cosine similarity (see Representation)
    prompt_norm: float = 26.0  # the norm of the LLM's (scaled) token embeddings; set by `for_model`
    query_layers: int = 0  # f_rm's top layers fine-tuned for queries alone (see RecipeModules.query_features)

    @classmethod
    def for_model(cls, model, **kw) -> "ModuleConfig":
        embed = model.get_input_embeddings()
        with torch.no_grad():  # through the module, so Gemma's sqrt(hidden) scaling is included
            sample = embed(torch.arange(0, embed.weight.shape[0], 97, device=embed.weight.device))
        return cls(hidden_size=model.config.hidden_size, model_type=model.config.model_type,
                   prompt_norm=round(float(sample.float().norm(dim=-1).median()), 3), **kw)


class Representation(nn.Module):
    """MLP_K or MLP_Q: Linear, then a residual ReLU block (the reference's shape).

    With `prior` (`ModuleConfig.encoder_prior`, the default) the output is [s * normalize(mean part
    of f) ; MLP(f)]: the dot product of two representations is then s_q s_k times the encoder's own
    cosine similarity plus what the MLPs learned on top. Why: MiniLM's cosine already finds the
    right CounterFact knowledge for 97.5% of rephrasings, and MLPs trained from scratch on ~10k edits
    found it for 87% (they fit the training rephrasings and lost some of that); with the prior they
    learn corrections, and the sentinel, on top of it.
    """

    def __init__(self, d_in: int, d: int, prior_width: int = 0):
        super().__init__()
        self.inp, self.block = nn.Linear(d_in, d), nn.Linear(d, d)
        self.prior_width = prior_width
        if prior_width:  # a cosine of 1 then adds about 4 to r_q . r_k / sqrt(d), an InfoNCE-sized margin
            self.log_scale = nn.Parameter(torch.tensor(0.5 * math.log(4 * math.sqrt(d + prior_width))))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        x = self.inp(f)
        x = x + F.relu(self.block(x))
        if not self.prior_width:
            return x
        return torch.cat([self.log_scale.exp() * F.normalize(f[:, :self.prior_width], dim=-1), x], -1)


class PromptGenerator(nn.Module):
    """MLP_P: a residual ReLU block, a Linear to n x hidden, reshaped (f_resp), on the token sphere.

    With answer anchors (`ModuleConfig.answer_anchor`, the default) the prompt is learned as a
    residual on the frozen LLM's own input embeddings of the new answer's first tokens, e:

        p_k = norm * gain * normalize(e / norm + T(e_1 / norm) + f_resp(MLP_P(r_k)))

    T and MLP_P's output layer start at zero, so an untrained prompt is the answer's embeddings.
    Why: in the paper's form p_k = f_resp(MLP_P(r_k)), MLP_P must learn to name one of 262k answer
    tokens from MiniLM features, and on CPU held-out reliability (with the own prompt attached) was
    0.025 after 100 steps; anchored, it was 0.99 after 80 (see RESULTS.md's RECIPE section).
    """

    def __init__(self, d: int, n: int, hidden: int, norm: float, anchored: bool):
        super().__init__()
        self.n, self.hidden, self.norm, self.anchored = n, hidden, norm, anchored
        self.block, self.out = nn.Linear(d, d), nn.Linear(d, n * hidden)
        self.log_gain = nn.Parameter(torch.zeros(n))
        if anchored:
            self.anchor = nn.Linear(hidden, n * hidden)  # T
            for layer in (self.anchor, self.out):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def widen(self, n: int) -> None:
        """Grow to n prompt vectors: the first ones keep their trained weights, the new ones' start
        at zero, so with answer anchors each new vector begins as the answer's next token embedding."""
        if n <= self.n:
            raise ValueError(f"n_prompt_tokens={n}: the prompts already have {self.n} vectors; widen only grows")
        for name in ("out",) + (("anchor",) if self.anchored else ()):
            old = getattr(self, name)
            grown = nn.Linear(old.in_features, n * self.hidden).to(old.weight)
            with torch.no_grad():
                for p, q in ((grown.weight, old.weight), (grown.bias, old.bias)):
                    p.zero_()
                    p[:len(q)] = q
            setattr(self, name, grown)
        self.log_gain = nn.Parameter(torch.cat([self.log_gain.data, torch.zeros(n - self.n).to(self.log_gain)]))
        self.n = n

    def forward(self, r: torch.Tensor, anchors: torch.Tensor | None = None) -> torch.Tensor:
        x = r + F.relu(self.block(r))
        if self.anchored:
            # Adam moves every weight by ~lr a step, so the output moves by ~lr * |x|_1: on a unit x
            # that is the size of the anchors' own entries, not ten times more (it was, unnormalised).
            x = F.normalize(x, dim=-1)
        p = self.out(x).view(-1, self.n, self.hidden)  # f_resp
        if self.anchored:
            if anchors is None:
                raise ValueError("these modules build prompts on the answer's embeddings: pass anchors "
                                 "(prompt_learning.answer_anchors(model, tokenizer, answers, n))")
            e = anchors.to(p) / self.norm
            p = p + e + self.anchor(e[:, 0]).view(-1, self.n, self.hidden)
        return F.normalize(p, dim=-1) * (self.norm * self.log_gain.exp())[:, None]


def answer_anchors(model, tokenizer, answers: list[str], n: int) -> torch.Tensor:
    """The LLM's input embeddings (after Gemma's sqrt(hidden) scaling) of each answer's first n
    tokens as a continuation, the last one repeated for shorter answers: [len(answers), n, hidden]."""
    embed = model.get_input_embeddings()
    rows = []
    for a in answers:
        ids = tokenizer(" " + a.strip(), add_special_tokens=False)["input_ids"][:n]
        rows.append(ids + ids[-1:] * (n - len(ids)))
    with torch.no_grad():
        return embed(torch.tensor(rows, device=embed.weight.device)).float().cpu()


def trace_encoder(encoder: nn.Module, tokenizer, half: bool):
    """A TorchScript trace of `encoder` (see `RecipeModules.traced_encoder`). half: trace a
    bfloat16 copy and freeze its weights into the graph; otherwise the trace shares the weights."""
    dummy = tokenizer(["a", "a b c"], padding=True, return_tensors="pt")
    if half:  # a copy that owns its weights: without BERT's pooler (unused here), frozen into the graph
        encoder = copy.deepcopy(encoder).to(torch.bfloat16)
        encoder.pooler = None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shape checks that the mask path doesn't take
        traced = torch.jit.trace(encoder, (dummy["input_ids"], dummy["attention_mask"]),
                                 strict=False, check_trace=False)
        return torch.jit.freeze(traced.eval()) if half else traced


def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[mean; max; min] over the real tokens of f_rm's last layer: [batch, 3 x width]."""
    m = mask[..., None].bool()
    mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    big = torch.finfo(hidden.dtype).max
    return torch.cat([mean, hidden.masked_fill(~m, -big).amax(1), hidden.masked_fill(~m, big).amin(1)], -1)


class RecipeModules(nn.Module):
    def __init__(self, config: ModuleConfig, encoder=None, seed: int = 0):
        """encoder: a loaded SentenceTransformer of config.encoder (default: load it)."""
        super().__init__()
        self.config = config
        st = encoder if encoder is not None else load_encoder(config.encoder)
        self.tokenizer, self.encoder = st.tokenizer, st[0].auto_model
        if config.finetune_encoder:  # training changes f_rm: a copy, so a shared encoder (LTE's) stays as it was
            self.encoder = copy.deepcopy(self.encoder)
        if config.query_layers:
            self.add_query_layers(config.query_layers)
        width = self.encoder.config.hidden_size
        torch.manual_seed(seed)
        prior = width if config.encoder_prior else 0
        self.key_dim = config.d_rep + prior  # the width of r_k, r~_q and r_Theta
        self.mlp_k = Representation(3 * width, config.d_rep, prior)
        self.mlp_q = Representation(3 * width, config.d_rep, prior)
        self.mlp_p = PromptGenerator(config.d_rep, config.n_prompt_tokens, config.hidden_size, config.prompt_norm,
                                     config.answer_anchor)
        self.sentinel = nn.Parameter((torch.rand(config.n_sentinel, width) - 0.5) * 0.1)  # the reference's init
        self.encoder.requires_grad_(config.finetune_encoder)
        self.eval()

    def train(self, mode: bool = True) -> "RecipeModules":
        super().train(mode)
        self.encoder.train(mode and self.config.finetune_encoder)  # a frozen f_rm never drops out
        if self.config.query_layers:  # nor do the query layers: they train on cached, dropout-free inputs
            self.query_encoder.eval()
        return self

    # ------------------------------------------------------------------ f_rm
    def tokens(self, texts: list[str], what: str = "text") -> dict:
        return tokenize(self.tokenizer, texts, what)

    def features(self, texts: list[str], what: str = "text", encoder: nn.Module | None = None) -> torch.Tensor:
        """f_rm(texts) pooled: [n, 3 x 384]. One batched encoder pass (encoder: f_rm by default)."""
        enc = self.tokens(texts, what)
        encoder = self.encoder if encoder is None else encoder
        if encoder is self.encoder and self.config.finetune_encoder and torch.is_grad_enabled():
            hidden = self.encoder(**enc).last_hidden_state
        else:
            with torch.no_grad():
                hidden = self.traced_encoder(encoder)(enc["input_ids"], enc["attention_mask"])["last_hidden_state"]
        return pool(hidden.float(), enc["attention_mask"])

    def add_query_layers(self, n: int) -> "RecipeModules":
        """Give the queries their own copy of f_rm whose top n layers train (`query_features`);
        knowledge and the sentinel keep the frozen f_rm. Trained modules can gain one (`train recipe
        --resume ... --query-layers n`): it starts as f_rm itself, so no decision changes until it trains."""
        layers = len(self.encoder.encoder.layer)
        if not 0 < n <= layers:
            raise ValueError(f"query_layers={n}: f_rm has {layers} layers; pick 1 to {layers}")
        if self.config.finetune_encoder:
            raise ValueError("finetune_encoder trains all of f_rm, query_layers the query side's top layers: pick one")
        self.config = replace(self.config, query_layers=n)
        self.query_encoder = copy.deepcopy(self.encoder).requires_grad_(False).eval()
        self.query_top.requires_grad_(True)
        return self

    def widen_prompts(self, n: int) -> "RecipeModules":
        """Longer prompts for trained modules (`train recipe --resume ... --prompt-tokens n`): with 3
        vectors, a ZsRE answer of 4 or more tokens came out exactly 0.08-0.41 of the time (1 or 2
        tokens: 0.85-0.88), own prompt attached. Keys and decisions stay; MLP_P needs training."""
        self.mlp_p.widen(n)
        self.config = replace(self.config, n_prompt_tokens=n)
        return self

    @property
    def query_top(self) -> nn.ModuleList:
        """The query side's trained layers (`ModuleConfig.query_layers`)."""
        return self.query_encoder.encoder.layer[-self.config.query_layers:]

    def query_features(self, texts: list[str], what: str = "query") -> torch.Tensor:
        """f_rm features of queries: through the query side's fine-tuned top layers if the modules
        have them, else the same f_rm as knowledge.

        Why a query side of its own: fine-tuning f_rm's top layer for the queries alone trains on
        cached lower-layer states of the training queries (a pass over one BERT layer, not six, and
        no backward through the rest), and it leaves the keys, and the prompts MLP_P builds from
        them, as they were: the sentinel and retrieval improve without retraining the prompts."""
        return self.features(texts, what, self.query_encoder if self.config.query_layers else None)

    def lower_states(self, texts: list[str]) -> list[torch.Tensor]:
        """Each query's token states below the query layers, computed once per text in training."""
        return lower_states(self.query_encoder, self.tokens(texts, "query"), self.config.query_layers)

    def query_layers_pass(self, states: list[torch.Tensor], chunk: int = 64) -> torch.Tensor:
        """Pooled features from `lower_states`, through the trained query layers (with gradients)."""
        return top_pass(self.query_top, states, pool, chunk)

    def traced_encoder(self, encoder: nn.Module | None = None):
        """f_rm as a TorchScript trace for no-grad passes, without transformers' per-call Python
        (mask building, output classes): ~40% of a one-sentence pass on CPU.

        A frozen f_rm is traced from a bfloat16 copy where the CPU multiplies bfloat16 natively
        (`fast_bf16`), and the graph is frozen (weights folded in as constants). An edit's sentence
        is a dozen tokens, so a pass mostly reads the 42 MB of fp32 layer weights (8 sentences
        cost 3.2x one); at half the bytes they fit a 32 MB cache: 6.9 -> 3.3 ms per sentence on
        2 Zen 4 cores. Pooled features keep a cosine > 0.9999 with fp32's (tested). A fine-tuned
        f_rm changes while it trains, so its trace shares the fp32 weights instead; so does the
        query side's (`query_features`). Traced on a padded pair, so the graph keeps the attention
        mask; traced again in train mode (dropout on). encoder: f_rm (default) or the query side's."""
        encoder = self.encoder if encoder is None else encoder
        half = encoder is self.encoder and not self.config.finetune_encoder and fast_bf16(encoder)
        key = (encoder.training, half)
        # plain attributes, not submodules: the traces stay out of state_dict and the fingerprint
        traces = self.__dict__.setdefault("_traces", {})
        if traces.get(id(encoder), (None,))[0] != key:
            traces[id(encoder)] = (key, trace_encoder(encoder, self.tokenizer, half))
        return traces[id(encoder)][1]

    def trace(self) -> None:
        """Trace f_rm (and the query side's copy) now, not inside the first edit or query."""
        self.traced_encoder()
        if self.config.query_layers:
            self.traced_encoder(self.query_encoder)

    def sentinel_features(self) -> torch.Tensor:
        """f_rm(Theta): the sentinel vectors go straight into the transformer layers, with no
        position embeddings and no embedding LayerNorm (they *are* the embedded input)."""
        hidden = self.encoder.encoder(self.sentinel[None]).last_hidden_state
        return pool(hidden, torch.ones(hidden.shape[:2], dtype=torch.long))

    # ------------------------------------------------------------------ representations
    def knowledge(self, features: torch.Tensor, anchors: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(r_k, p_k) for knowledge features (and answer anchors): keys [n, key_dim] and prompts
        [n, n_prompt_tokens, hidden]."""
        r = self.mlp_k(features)
        return r, self.prompts(r, anchors)

    def prompts(self, r_k: torch.Tensor, anchors: torch.Tensor | None = None) -> torch.Tensor:
        """p_k = f_resp(MLP_P(r_k)), from the learned part of r_k (the cosine prior is the encoder's own)."""
        return self.mlp_p(r_k[:, r_k.shape[1] - self.config.d_rep:], anchors)

    def query(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp_q(features)

    def r_sentinel(self) -> torch.Tensor:
        return self.mlp_k(self.sentinel_features())[0]

    def similarity(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """r~_q . r_k / sqrt(d), the reference's scale (it changes no decision, only the numbers)."""
        return queries @ keys.T / math.sqrt(self.key_dim)

    def architecture(self) -> list[dict]:
        """Each part with its input and output shapes and trained parameter count, read off the modules."""
        enc, c, d = self.encoder.config, self.config, self.key_dim
        feat = 3 * enc.hidden_size
        prior = f" = [cosine prior {enc.hidden_size}; MLP {c.d_rep}]" if c.encoder_prior else ""

        def count(m: nn.Module) -> int:
            return sum(p.numel() for p in m.parameters())
        return [
            {"part": "f_rm (MiniLM, " + ("fine-tuned" if c.finetune_encoder else "frozen") + ")",
             "in": "text, <= 128 tokens", "out": f"[tokens, {enc.hidden_size}] -> pooled [mean; max; min] = [{feat}]",
             "trained parameters": count(self.encoder) if c.finetune_encoder else 0},
            *([{"part": f"f_rm's top {c.query_layers} layer(s), queries only (fine-tuned copy)",
                 "in": f"query tokens from f_rm layer {enc.num_hidden_layers - c.query_layers}",
                 "out": f"pooled [{feat}]", "trained parameters": count(self.query_top)}] if c.query_layers else []),
            {"part": "MLP_K (knowledge)", "in": f"[{feat}]", "out": f"r_k [{d}]{prior}", "trained parameters": count(self.mlp_k)},
            {"part": "MLP_Q (query)", "in": f"[{feat}]", "out": f"r~_q [{d}]{prior}", "trained parameters": count(self.mlp_q)},
            {"part": "MLP_P (prompt)", "in": f"r_k's MLP part [{c.d_rep}]" + (" and the answer's LLM embeddings" if c.answer_anchor else ""),
             "out": f"p_k [{c.n_prompt_tokens}, {c.hidden_size}] (norm {c.prompt_norm:.1f})", "trained parameters": count(self.mlp_p)},
            {"part": "Theta (Knowledge Sentinel)", "in": f"[{c.n_sentinel}, {enc.hidden_size}] below f_rm's embeddings",
             "out": f"r_Theta [{d}] via f_rm and MLP_K", "trained parameters": self.sentinel.numel()},
        ]

    # ------------------------------------------------------------------ persistence
    def trained_state(self) -> dict[str, torch.Tensor]:
        """The weights training changes (f_rm only if it was fine-tuned, the query side's top layers)."""
        layers = len(self.encoder.encoder.layer)
        top = tuple(f"query_encoder.encoder.layer.{i}." for i in range(layers - self.config.query_layers, layers))

        def trained(name: str) -> bool:
            if name.startswith("encoder."):
                return self.config.finetune_encoder
            return not name.startswith("query_encoder.") or name.startswith(top)
        return {k: v.detach().float().contiguous().cpu() for k, v in self.state_dict().items() if trained(k)}

    def fingerprint(self) -> str:
        """A hash of the trained weights: stored edits made with other weights are refused."""
        return fingerprint(self.trained_state())


def sentinel_decision(query: torch.Tensor, keys: torch.Tensor, sentinel: torch.Tensor) -> int | None:
    """KS(q) for one query [d], keys [n, d] and r_Theta [d]: the index j of the top-1 key if
    r~_q . r_kj > r~_q . r_Theta, else None (attach nothing). The editor applies the same rule to
    faiss's top hit."""
    if len(keys) == 0:
        return None
    scores = keys @ query
    j = int(scores.argmax())
    return j if scores[j] > sentinel @ query else None


# ----------------------------------------------------------------------------- the losses

def info_nce(q: torch.Tensor, keys: torch.Tensor, positive: torch.Tensor, tau: float = 1.0,
             exclude: torch.Tensor | None = None) -> torch.Tensor:
    """delta(q, k+, K) = -log exp(q.k+ / tau) / sum_K exp(q.k / tau), per row (the deck's InfoNCE).

    q [b, d], keys [n, d], positive [b] (index into keys); exclude [b, n], True where a key leaves
    row b's K (R minus k_i). Scores are scaled by 1/sqrt(d) as at retrieval, then by tau.
    """
    logits = q @ keys.T / math.sqrt(q.shape[-1]) / tau
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
    return F.cross_entropy(logits, positive, reduction="none")


def prompt_learning_loss(r_k: torch.Tensor, r_theta: torch.Tensor, r_e: torch.Tensor, r_g: torch.Tensor,
                         r_l: torch.Tensor, tau: float = 1.0, bank: torch.Tensor | None = None,
                         clash: torch.Tensor | None = None, r_x: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """L_no and L_so over R = {r_k1..r_kb} + bank + {r_Theta} (the sentinel is R's last row).

    bank [m, d]: keys of other knowledge, negatives only (`TrainConfig.bank`); clash [b, m] marks
    a bank key that is row i's own knowledge, kept out of row i's K. r_x [x, d]: more queries that
    must reach the sentinel (the batch's other locality prompts).
    """
    b = r_k.shape[0]
    R = torch.cat([r_k] + ([] if bank is None else [bank]) + [r_theta[None]])
    n = R.shape[0]
    hide = torch.zeros(b, n, dtype=torch.bool)
    if clash is not None:
        hide[:, b:n - 1] = clash
    own, sentinel = torch.arange(b), torch.full((b,), n - 1)
    without_own = hide.clone()
    without_own[own, own] = True
    l_no = info_nce(r_e, R, own, tau, hide) + info_nce(r_g, R, own, tau, hide)  # neighbour-oriented
    l_so = (info_nce(r_l, R, sentinel, tau) + info_nce(r_e, R, sentinel, tau, without_own)
            + info_nce(r_g, R, sentinel, tau, without_own)).mean()  # sentinel-oriented
    if r_x is not None and len(r_x):
        l_so = l_so + info_nce(r_x, R, torch.full((len(r_x),), n - 1), tau).mean()
    return {"no": l_no.mean(), "so": l_so}


def locality_kl(model, tokenizer, queries: list[str], answers: list[str], prompts: torch.Tensor) -> torch.Tensor:
    """Eq. 12: KL(f(q_l) || f^(p + q_l)) at the answer positions, mean over positions."""
    batch = pack_targets(tokenizer, queries, answers)
    with torch.no_grad():
        before = torch.log_softmax(target_logits(model, batch), -1)
    after = torch.log_softmax(target_logits(model, batch, prefixes=list(prompts)), -1)
    return F.kl_div(after, before, log_target=True, reduction="batchmean")


def edit_loss(model, tokenizer, examples: list["TrainingExample"], prompts: torch.Tensor,
              continuations: list[str] | None = None) -> dict[str, torch.Tensor]:
    """L_rel (Eq. 10), L_gen (Eq. 11) and L_loc (Eq. 12) for prompts [b, n, hidden].

    continuations: per example, what the unedited model writes after "q_e a_e". Then L_rel's pass
    runs on past the answer, and L_flu = KL(f(q_e a_e c) || f^(p + q_e a_e c)) over c's positions:
    the prompt must give the answer and then let the model go on as it would have (a prompt built
    on the answer's embeddings otherwise keeps saying it: "Sydney Sydney is a city").
    """
    fmt = lambda q: format_prompt(tokenizer, q)  # noqa: E731
    out = {}
    texts = [fmt(e.q_e) for e in examples]
    if continuations is None:
        batch = pack_targets(tokenizer, texts, [e.a_e for e in examples])
        out["rel"] = nll(target_logits(model, batch, prefixes=list(prompts)), batch.gold)
    else:
        said = [len(encode_pair(tokenizer, x, e.a_e)[1]) for x, e in zip(texts, examples)]
        batch = pack_targets(tokenizer, texts, [e.a_e + c for e, c in zip(examples, continuations)])
        answer = torch.tensor([j < n for y, n in zip(batch.target_ids, said) for j in range(len(y))])
        logits = target_logits(model, batch, prefixes=list(prompts))
        out["rel"] = nll(logits[answer], batch.gold[answer])
        if (~answer).any():
            with torch.no_grad():
                before = torch.log_softmax(target_logits(model, batch)[~answer], -1)
            after = torch.log_softmax(logits[~answer].float(), -1)
            out["flu"] = F.kl_div(after, before, log_target=True, reduction="batchmean")
    batch = pack_targets(tokenizer, [fmt(e.q_g) for e in examples], [e.a_g for e in examples])
    out["gen"] = nll(target_logits(model, batch, prefixes=list(prompts)), batch.gold)
    out["loc"] = locality_kl(model, tokenizer, [fmt(e.q_l) for e in examples], [e.a_l for e in examples], prompts)
    return out


def unedited_continuations(model, tokenizer, examples: list["TrainingExample"], tokens: int,
                           cache: dict[str, str]) -> list[str]:
    """What the unedited model writes after each "q_e a_e" (greedy, `tokens` tokens), cached by text."""
    texts = [format_prompt(tokenizer, e.q_e) + continuation(format_prompt(tokenizer, e.q_e), e.a_e) for e in examples]
    todo = [t for t in dict.fromkeys(texts) if t not in cache]
    if todo:
        cache.update(zip(todo, generate_greedy(model, tokenizer, todo, tokens, batch_size=len(todo))))
    return [cache[t] for t in texts]


# ----------------------------------------------------------------------------- training data

@dataclass
class TrainingExample:
    """One edit sample: the knowledge k, and (q_e, a_e), (q_g, a_g), (q_l, a_l); more_locality holds
    the case's other locality prompts, which L_pl also sends to the sentinel."""
    case_id: str
    knowledge: str
    q_e: str
    a_e: str
    q_g: str
    a_g: str
    q_l: str
    a_l: str
    more_locality: tuple[str, ...] = ()
    subject: str = ""  # read by the relation check's training (relation_check.py), not by RECIPE's


def training_example(case: EditCase) -> TrainingExample | None:
    """The case as a training sample, or None if it lacks a generality or a locality query.

    The generality query is a rephrasing or, where a data set has none (KnowEdit's train_cf,
    recent_train), a portability question answered by the new target itself (a subject alias).
    """
    general = [(q, case.target_new) for q in case.rephrase_prompts]
    general += [(q, a) for q, a in case.portability if a == case.target_new]
    if not general or not case.locality:
        return None
    (q_g, a_g), (q_l, a_l) = general[0], case.locality[0]
    more = tuple(dict.fromkeys(q for q, _ in case.locality[1:] if q != q_l))
    return TrainingExample(case.case_id, case.descriptor, case.prompt, case.target_new, q_g, a_g, q_l, a_l, more,
                           case.subject)


def default_sources() -> list[str]:
    """Every form a student writes: cloze statements (CounterFact-train, KnowEdit's train_cf and
    recent_train) and questions (KnowEdit ZsRE's training part), where a local copy exists."""
    files = (("counterfact", "counterfact/counterfact-train.json"), ("knowedit", "knowedit/train_cf.json"),
             ("knowedit", "knowedit/recent_train.json"))
    specs = [f"{scheme}:{SHARED_DIR / rel}" for scheme, rel in files if (SHARED_DIR / rel).exists()]
    return specs + (["zsre-train"] if (SHARED_DIR / ZSRE_FILE).exists() else [])


def held_out_cases() -> list[EditCase]:
    """Every case the course evaluates RECIPE on: CounterFact-edit, ZsRE's held-out part, the first
    teach cases."""
    from .alignment import default_held_out
    teach = {c.case_id for c in load_teach()[TEACH_HELD_OUT:]}
    zsre = (load_cases("zsre-held-out") if (SHARED_DIR / ZSRE_FILE).exists() else [])
    return [c for c in default_held_out() if not (c.source == "teach" and c.case_id in teach)
            and c.source != "knowedit-zsre"] + zsre


def training_examples(specs: list[str] | None = None, held_out: list[EditCase] | None = None,
                      n: int | None = None, seed: int = 0) -> tuple[list[TrainingExample], dict]:
    """Training samples from data specs plus the bundled cases not held out; subjects disjoint from
    every evaluation set. Returns (examples, a record of what was used, the ZsRE split included).

    A locality prompt that is another sample's edit prompt or rephrasing is not sent to the
    sentinel (`more_locality`): the two would pull one query both ways."""
    specs = default_sources() if specs is None else specs
    held_out = held_out_cases() if held_out is None else held_out
    teach = load_teach()[TEACH_HELD_OUT:]
    with dropping_quietly():
        cases = [c for spec in specs for c in load_cases(spec)] + teach
    for i, c in enumerate(cases):  # case_ids repeat across files
        c.case_id = f"train{i}-{c.case_id}"
    kept = disjoint_subjects(cases, held_out)
    examples = [e for e in map(training_example, kept) if e is not None]
    asked = {q for e in examples for q in (e.q_e, e.q_g)}
    for e in examples:
        e.more_locality = tuple(q for q in e.more_locality if q not in asked)
    random.Random(seed).shuffle(examples)
    examples = examples[:n]
    shown = [s.replace(str(SHARED_DIR), "../shared/data") for s in specs]  # no machine's own paths in records
    record = {"sources": shown + [f"teach[{TEACH_HELD_OUT}:]"], "cases": len(cases),
              "after_disjoint_subjects": len(kept), "examples": len(examples)}
    splits = [r for r in map(split_record, specs) if r]
    return examples, {**record, **({"zsre_split": splits[0]} if splits else {})}


# ----------------------------------------------------------------------------- training

@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 8           # b: edits per step that go through the LLM (L_edit)
    contrastive_batch: int = 256  # edits per step in L_pl (b <= this); see the module docstring
    lr: float = 1e-3              # MLP_K, MLP_Q and the sentinel
    prompt_lr: float = 3e-3       # MLP_P (the reference defines a pt_lr but never uses it)
    encoder_lr: float = 1e-5      # the reference's lr, used for f_rm only when it is fine-tuned
    tau: float = 1.0
    loc_weight: float = 0.2       # lambda_loc on Eq. 12 (the paper: 1); see the module docstring
    edit_loss: bool = True        # False: train the retrieval part alone (cheap; for comparisons)
    edit_every: int = 4           # L_edit on every k-th step, L_pl on every step (it needs more steps)
    prompt_learning: bool = True  # False: MLP_P alone on L_edit at every step, retrieval kept as it is
    seed: int = 0                 #   (more prompt training for trained modules: `train recipe --resume`)
    bank: int = 0                 # memory bank: keys of this many other edits per step, negatives only
    neighbours: int = 0           # hard negatives: each seed edit's h nearest (encoder cosine) in its batch
    fluency_weight: float = 0.0   # L_flu past the answer (see edit_loss); 0: not computed
    continuation_tokens: int = 8  # how far past the answer L_flu looks
    queries_only: bool = False    # L_pl trains MLP_Q, the sentinel (and query layers); MLP_K, so keys and prompts, stay


def cached_features(modules: RecipeModules, texts: list[str], cache: dict[str, torch.Tensor],
                    batch: int = 256) -> torch.Tensor:
    """f_rm features, cached per text when the encoder is frozen (computed once, with a progress bar)."""
    if modules.config.finetune_encoder:
        return modules.features(texts)
    todo = list(dict.fromkeys(t for t in texts if t not in cache))
    with torch.no_grad():
        for i in tqdm(range(0, len(todo), batch), desc="encoding texts (f_rm, once)", disable=len(todo) <= batch):
            cache.update(zip(todo[i:i + batch], modules.features(todo[i:i + batch])))
    return torch.stack([cache[t] for t in texts])


def _lower_states(modules: RecipeModules, texts: list[str], states: dict[str, torch.Tensor], batch: int = 256) -> None:
    """Fill `states` with the query texts' states below the query layers (once; they never change)."""
    todo = list(dict.fromkeys(t for t in texts if t not in states))
    for i in tqdm(range(0, len(todo), batch), desc="f_rm's lower layers over the queries (once)",
                  disable=len(todo) <= batch):
        states.update(zip(todo[i:i + batch], modules.lower_states(todo[i:i + batch])))


def _feature_file(modules: RecipeModules) -> Path:
    half = fast_bf16(modules.encoder)  # a bfloat16 trace gives (very slightly) other features
    return cache_dir() / "recipe" / "features" / f"{modules.config.encoder}-{'bf16' if half else 'fp32'}.safetensors"


def stored_features(modules: RecipeModules) -> dict[str, torch.Tensor]:
    """f_rm features of texts encoded by earlier training runs on this machine (a frozen encoder
    gives the same features every time): encoding 45k training texts takes minutes on 2 cores."""
    path = _feature_file(modules)
    if modules.config.finetune_encoder or not path.exists():
        return {}
    try:
        texts = json.loads(path.with_suffix(".json").read_text())
        return dict(zip(texts, load_file(str(path))["features"]))
    except Exception:  # a damaged cache is only a slower start: encode again
        return {}


def store_features(modules: RecipeModules, cache: dict[str, torch.Tensor]) -> None:
    if modules.config.finetune_encoder or not cache:
        return
    path = _feature_file(modules)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"features": torch.stack(list(cache.values())).contiguous()}, str(path))
    path.with_suffix(".json").write_text(json.dumps(list(cache)))


def nearest(features: torch.Tensor, h: int, chunk: int = 2048) -> torch.Tensor:
    """[n, h] indices of each row's h nearest other rows by cosine (the hard-negative pool)."""
    x = F.normalize(features, dim=-1)
    out = []
    for i in range(0, len(x), chunk):
        sim = x[i:i + chunk] @ x.T
        sim[torch.arange(len(sim)), torch.arange(i, i + len(sim))] = -2  # not itself
        out.append(sim.topk(h, dim=-1).indices)
    return torch.cat(out)


def neighbour_batches(pool: torch.Tensor, size: int, rng: random.Random):
    """Endless batches of `size` indices: seeds in a shuffled order, each with its nearest
    (`pool`, from `nearest`) beside it, so the in-batch negatives are look-alikes (same relation,
    similar subjects); topped up at random where neighbours repeat."""
    n, h = pool.shape
    seeds = shuffled_batches(n, max(1, size // (h + 1)), rng)
    while True:
        batch = list(dict.fromkeys(i for s in next(seeds) for i in (s, *pool[s].tolist())))[:size]
        chosen = set(batch)
        while len(batch) < size:
            i = rng.randrange(n)
            if i not in chosen:
                chosen.add(i)
                batch.append(i)
        yield batch


def train_modules(modules: RecipeModules, model, tokenizer, examples: list[TrainingExample],
                  cfg: TrainConfig | None = None, progress: bool = True,
                  callback: Callable[[int, dict], None] | None = None, every: int = 100,
                  start: int = 0, cache: dict[str, torch.Tensor] | None = None) -> dict[str, list[float]]:
    """Train the modules on the examples with L = L_edit + L_pl; the LLM stays frozen.

    Returns the loss curves per step: total, rel, gen, loc, flu, no, so. callback(step, curves) runs
    every `every` steps with the modules in eval mode (to measure held-out scores, or to save a
    checkpoint). start: steps already done by a stopped run of the same config; training goes on
    from there to cfg.steps on the same learning-rate schedule (Adam's moments start afresh).
    cache: f_rm features by text, shared between runs on the same frozen encoder.
    """
    cfg = cfg or TrainConfig()
    if not (cfg.edit_loss or cfg.prompt_learning):
        raise ValueError("edit_loss=False and prompt_learning=False leave nothing to train")
    size = cfg.contrastive_batch if cfg.prompt_learning else cfg.batch_size
    check_run(len(examples), size, start, cfg.steps)
    if cfg.batch_size > cfg.contrastive_batch:
        raise ValueError(f"batch_size={cfg.batch_size} exceeds contrastive_batch={cfg.contrastive_batch}")
    edit_every = cfg.edit_every if cfg.prompt_learning else 1
    torch.manual_seed(cfg.seed)
    groups = [{"params": list(modules.mlp_p.parameters()), "lr": cfg.prompt_lr}]
    kept = ("encoder", "mlp_p", "query_encoder") + (("mlp_k",) if cfg.queries_only else ())
    if cfg.prompt_learning:
        groups.append({"params": [p for n, p in modules.named_parameters() if n.split(".")[0] not in kept], "lr": cfg.lr})
    if modules.config.finetune_encoder and cfg.prompt_learning:
        groups.append({"params": list(modules.encoder.parameters()), "lr": cfg.encoder_lr})
    if modules.config.query_layers and cfg.prompt_learning:
        groups.append({"params": list(modules.query_top.parameters()), "lr": cfg.encoder_lr})
    opt = torch.optim.Adam(groups)
    # linear decay to zero: at a constant rate, held-out reliability swung between 0.77 and 0.91
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(cfg.steps - start - s, 0) / cfg.steps)
    cache = {} if cache is None else cache
    said: dict[str, str] = {}  # the unedited model's continuations, for L_flu
    layered = modules.config.query_layers and cfg.prompt_learning
    if not modules.config.finetune_encoder:  # MLP_P alone needs only the knowledge's features
        cached_features(modules, [t for e in examples for t in ((e.knowledge, e.q_e, e.q_g, e.q_l, *e.more_locality)
                                                          if cfg.prompt_learning and not layered else (e.knowledge,))], cache)
    states: dict[str, torch.Tensor] = {}
    if layered:
        _lower_states(modules, [t for e in examples for t in (e.q_e, e.q_g, e.q_l, *e.more_locality)], states)

    def query(texts: list[str]) -> torch.Tensor:  # r~_q
        f = modules.query_layers_pass([states[t] for t in texts]) if layered else cached_features(modules, texts, cache)
        return modules.query(f)
    rng = random.Random(cfg.seed + start)
    if cfg.neighbours and cfg.prompt_learning:
        with torch.no_grad():  # the mean-pooled part of f_rm: the encoder's own sentence embedding
            knowledge = cached_features(modules, [e.knowledge for e in examples], cache)
        batches = neighbour_batches(nearest(knowledge[:, :modules.encoder.config.hidden_size], cfg.neighbours),
                                    size, rng)
    else:
        batches = shuffled_batches(len(examples), size, rng)
    curves: dict[str, list[float]] = {k: [] for k in ("total", "rel", "gen", "loc", "flu", "no", "so")}
    modules.train()
    bar = tqdm(range(start, cfg.steps), desc="RECIPE training" + ("" if cfg.prompt_learning else " (MLP_P alone)"),
               disable=not progress, initial=start, total=cfg.steps)
    try:
        for _ in bar:
            index = next(batches)
            batch = [examples[i] for i in index]
            f_k = cached_features(modules, [e.knowledge for e in batch], cache)
            losses = {}
            if cfg.prompt_learning:
                r_q = query([t for e in batch for t in (e.q_e, e.q_g, e.q_l)])
                r_e, r_g, r_l = r_q.view(len(batch), 3, -1).unbind(1)
                with torch.set_grad_enabled(not cfg.queries_only):
                    r_k = modules.mlp_k(f_k)
                bank = clash = r_x = None
                if cfg.bank:  # f_rm is frozen and cached, so the bank's keys are fresh, not a stale queue
                    others = [rng.randrange(len(examples)) for _ in range(cfg.bank)]
                    with torch.set_grad_enabled(not cfg.queries_only):
                        bank = modules.mlp_k(cached_features(modules, [examples[j].knowledge for j in others], cache))
                    clash = torch.tensor(index)[:, None] == torch.tensor(others)[None]
                more = [q for e in batch for q in e.more_locality]
                if more:
                    r_x = query(more)
                losses.update(prompt_learning_loss(r_k, modules.r_sentinel(), r_e, r_g, r_l, cfg.tau, bank, clash, r_x))
            else:  # the keys stay as they are; only the prompts built from them learn
                with torch.no_grad():
                    r_k = modules.mlp_k(f_k)
            if cfg.edit_loss and (start + len(curves["total"])) % edit_every == 0:
                edits = batch[:cfg.batch_size]
                anchors = answer_anchors(model, tokenizer, [e.a_e for e in edits], modules.config.n_prompt_tokens)
                # decoding outside autocast: it would cast the fp32 output layer anew at every token
                conts = unedited_continuations(model, tokenizer, edits, cfg.continuation_tokens, said) \
                    if cfg.fluency_weight else None
                with cpu_autocast(model):
                    losses.update(edit_loss(model, tokenizer, edits, modules.prompts(r_k[:len(edits)], anchors), conts))
            # L = L_edit + L_pl, with L_loc and L_flu weighted; the curves keep the unweighted KLs
            weight = {"loc": cfg.loc_weight, "flu": cfg.fluency_weight}
            total = sum(weight.get(k, 1.0) * v for k, v in losses.items())
            opt.zero_grad()
            total.backward()
            opt.step()
            sched.step()
            curves["total"].append(total.item())
            for k, v in losses.items():
                curves[k].append(v.item())
            bar.set_postfix({k: f"{sum(v[-20:]) / len(v[-20:]):.3f}" for k, v in curves.items() if v})
            step = start + len(curves["total"])
            if callback is not None and step % every == 0:
                modules.eval()
                callback(step, curves)
                modules.train()
    finally:
        modules.eval()
    return curves


# ----------------------------------------------------------------------------- saved modules

def trained_path(model_name: str) -> Path:
    """Where `train recipe` writes by default: the user's cache, never the installed package."""
    return cache_dir() / "recipe" / model_folder(model_name)


def default_path(model_name: str) -> Path:
    """The modules RECIPE(modules="default") loads: ones you trained, else the ones shipped."""
    return yours_or_shipped(trained_path(model_name), SHIPPED / model_folder(model_name), WEIGHTS_FILE)


def make_record(modules: RecipeModules, model_name: str, cfg: TrainConfig, data: dict,
                curves: dict[str, list[float]], seconds: float, resumed_from: dict | None = None) -> dict:
    """resumed_from: the record of the modules this run went on training; kept whole (its own
    history included), so the shipped record says every step that made the weights."""
    record = run_record({"model": model_name, "modules": asdict(modules.config), "train": asdict(cfg)}, data,
                        curves, seconds, first="total")
    if resumed_from is not None:
        record["resumed_from"] = resumed_from
    return record


def training_stages(record: dict) -> list[dict]:
    """The runs that made a set of modules, the first one first (a record and those it resumed)."""
    stages = [record]
    while "resumed_from" in stages[-1]:
        stages.append(stages[-1]["resumed_from"])
    return stages[::-1]


def training_summary(record: dict) -> str:
    """One line per training run that made the modules, e.g. for a notebook to print."""
    lines, stages = [], training_stages(record)
    for i, (before, r) in enumerate(zip([None, *stages], stages), 1):
        t = r["train"]
        negatives = "".join([f", a bank of {t['bank']} more keys" if t.get("bank") else "",
                             f", {t['neighbours']} mined look-alikes per seed" if t.get("neighbours") else ""])
        layers = r["modules"].get("query_layers", 0)
        if t.get("queries_only"):
            tower = f" and MiniLM's top {layers} layer(s) for queries (lr {t['encoder_lr']:g})" if layers else ""
            what = (f"the query side alone (L_pl): MLP_Q, the sentinel{tower}; keys and prompts kept, "
                    f"{t['contrastive_batch']} edits a batch{negatives}, lr {t['lr']}")
        elif not t.get("edit_loss", True):
            what = f"MLP_K, MLP_Q and the sentinel alone (L_pl), {t['contrastive_batch']} edits a batch{negatives}, lr {t['lr']}"
        elif t.get("prompt_learning", True):
            what = (f"all modules, {t['contrastive_batch']} edits in the contrastive loss{negatives}, L_edit on 1 step in "
                    f"{t['edit_every']}, lr {t['lr']} (MLP_P {t['prompt_lr']})")
        else:
            what = f"MLP_P alone, L_edit on every step, lr {t['prompt_lr']}"
        if t.get("edit_loss", True):
            what += f", L_loc weighted {t.get('loc_weight', 1.0):g}"  # runs before the setting existed used 1
            what += f", L_flu weighted {t['fluency_weight']:g}" if t.get("fluency_weight") else ""
        through = f", {t['batch_size']} edits through the LLM per step" if t.get("edit_loss", True) else ""
        width, was = r["modules"]["n_prompt_tokens"], before and before["modules"]["n_prompt_tokens"]
        if before and was != width:
            what = f"prompts widened from {was} to {width} vectors, " + what
        lines.append(f"run {i}: {r['steps']} steps ({what}){through}, "
                     f"{r['seconds'] / 60:.0f} min, {r['data']['examples']} training examples, seed {t['seed']}")
    return "\n".join(lines)


def save_modules(modules: RecipeModules, path: str | Path, record: dict) -> Path:
    return save_trained(modules, path, WEIGHTS_FILE, record)


def read_record(path: str | Path) -> dict:
    return read_trained_record(path, WEIGHTS_FILE, "modules", ModuleConfig, ModuleError,
                               "pass a folder written by `python -m kedit_teach train recipe`",
                               "the module shapes", "the modules")


def check_fits(config: ModuleConfig, model, what: str) -> None:
    """Refuse modules made for another LLM: their prompts live in another embedding space."""
    if (config.hidden_size, config.model_type) != (model.config.hidden_size, model.config.model_type):
        raise ModuleError(
            f"{what} says hidden_size={config.hidden_size}, model_type={config.model_type!r}, but this model has "
            f"hidden_size={model.config.hidden_size}, model_type={model.config.model_type!r}; use the model they "
            "were made for, or train modules for this one with `python -m kedit_teach train recipe --model NAME`")


def load_modules(path: str | Path, model=None, encoder=None) -> tuple[RecipeModules, dict]:
    """Saved modules and their record; with a model, refuse modules trained for another one."""
    path = Path(path)
    record = read_record(path)
    config = ModuleConfig(**record["modules"])
    if model is not None:
        check_fits(config, model, f"{path / RECORD_FILE}: field 'modules' (trained for {record.get('model')!r})")
    modules = RecipeModules(config, encoder)
    load_trained_state(modules, path, WEIGHTS_FILE, "modules", ModuleError, "the modules")
    return modules, record
