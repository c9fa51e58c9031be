"""ROME, Rank-One Model Editing (Meng et al., NeurIPS 2022): an edit is a rank-one change of one MLP
down-projection W, so that the key of the subject maps to a value that makes the model say the new
target.

    k*   the down-projection's input at the subject's last token, averaged over the prompt behind
         short prefixes the model writes itself ("{}" plus n_prefixes of 5 and 10 tokens)     Eq. 3
    v*   W k + delta, with delta optimised so the model says target_new behind every prefix,
         a KL term keeping "{subject} is a" as it was, a weight decay on delta, and
         |delta| clamped to clamp_norm x |W k|                                                Eq. 4
    W' = W + (v* - W k*) (C^-1 k*)^T / (k*^T C^-1 k*)                                          Eq. 2

C = E[k k^T] is the layer's key second moment (`layer_stats`). W' k* = v* exactly, and for keys
that C says are unlike k* the change is small.

The reference code uses the averaged key for C^-1 k* but the bare prompt's key in W k* and the
denominator; the two disagree, and some edits then blow up the layer ("disabling edits", Gupta et
al. 2024, r-ROME). `consistent_key=True` (the default) uses the averaged key in both places;
`consistent_key=False` reproduces the reference.

Choices, and why (the key, the value and the bookkeeping are shared with MEMIT: editors/locate.py):
- the layer defaults to `default_rome_layer` (a layer sweep is `benchmarks/bench_locate.py layers`);
- 10 prefixes instead of the reference's 20: every step of the value optimisation runs the model on
  all of them, so this halves an edit's time (0.9 s a step in fp32 on 2 CPU cores, with the text up
  to the subject cached; bf16 autocast was no faster); the update is solved in float64.

Sequential edits are applied on top of each other, as in the papers' lifelong setting (a batch is
made one edit after another), and the edited layer's Frobenius norm is logged after each (`norms`):
its growth is the visible sign of the collapse. remove() replays the other edits from the original
weights (a rank-one update computed on weights that included the removed edit cannot be subtracted
exactly).

What it does not do: several layers at once (MEMIT, editors/memit.py) or 4-bit weights (refused:
load the model without quantization to edit its weights).
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import EditCase
from .locate import LocateEditor, LocateError  # noqa: F401  (ROME's refusals raise LocateError)


def default_rome_layer(model) -> int:
    """Low in the network: one eighth of the depth (Gemma-3-270M: layer 2 of 18; Llama-2-7B: 4 of 32,
    where EasyEdit edits layer 5). Measured on Gemma-3-270M, 10 CounterFact edits at layers 2 / 4 / 7:
    teacher-forced reliability 1.0 at each, generality 0.3 / 0.4 / 0.4, locality 0.9 / 0.6 / 0.4.
    Higher layers generalise a little better and bleed much more into neighbouring subjects."""
    return max(1, model.config.num_hidden_layers // 8)


def rank_one_update(W: torch.Tensor, C: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Eq. 2: Delta = (v - W k) (C^-1 k)^T / (k^T C^-1 k), in float64. W [d_out, d_k], C [d_k, d_k],
    k [d_k], v [d_out]. Then (W + Delta) k = v."""
    W, C, k, v = (t.to(torch.float64) for t in (W, C, k, v))
    u = torch.linalg.solve(C, k)  # C^-1 k, without forming the inverse
    return torch.outer(v - W @ k, u) / (k @ u)


class ROME(LocateEditor):
    name = "rome"
    summary = ("writes the fact into one MLP layer as a rank-one weight change: it generalises to "
               "rephrasings, but each edit moves the weights, and many edits wear the layer out")

    # EasyEdit's Llama settings (kmeng01/rome's GPT settings differ only in the weight decay)
    def __init__(self, model, tokenizer, layer: int | None = None, steps: int = 25, lr: float = 0.5,
                 kl_factor: float = 0.0625, weight_decay: float = 1e-3, clamp_norm: float = 4.0,
                 consistent_key: bool = True, mom2: bool = True, corpus: str = "model", n_keys: int | None = None,
                 ridge: float = 1e-3, n_prefixes: int = 10, seed: int = 0):
        super().__init__(model, tokenizer, [default_rome_layer(model) if layer is None else layer], steps=steps,
                         lr=lr, kl_factor=kl_factor, weight_decay=weight_decay, clamp_norm=clamp_norm, mom2=mom2,
                         corpus=corpus, n_keys=n_keys, ridge=ridge, n_prefixes=n_prefixes, seed=seed)
        self.layer = self.layers[0]
        self.linear = self.linears[self.layer]
        self.consistent_key = consistent_key

    def config(self):
        return {**super().config(), "consistent_key": self.consistent_key}

    @property
    def C(self) -> torch.Tensor:
        """The edited layer's key second moment, with a small ridge."""
        return self.moment(self.layer)

    def key(self, case: EditCase) -> tuple[torch.Tensor, torch.Tensor]:
        """(k* averaged over the templates, k of the bare prompt), Eq. 3."""
        k_mean, k_bare = self.keys(self.layer, [case])
        return k_mean[0], k_bare[0]

    def value(self, case: EditCase) -> tuple[torch.Tensor, dict]:
        """delta, with v* = W k + delta (Eq. 4), optimised at the down-projection's output."""
        return super().value(case, self.linear)

    def key_mismatch(self, case: EditCase) -> float:
        """(k*^T C^-1 k*) / (k^T C^-1 k*), k the bare prompt's key: how many times its shift the
        reference's update gives the averaged key k*. Far from 1, the edit overshoots ("disabling")."""
        k_mean, k_bare = (k.double() for k in self.key(case))
        u = torch.linalg.solve(self.C, k_mean)
        return float((k_mean @ u) / (k_bare @ u))

    def _edit(self, cases):
        (case,) = cases
        k_mean, k_bare = self.key(case)
        shift, info = self.value(case)
        W = self.linear.weight.detach().cpu().double()
        if self.consistent_key:  # r-ROME: the averaged key everywhere, so W' k* = W k* + delta
            delta = rank_one_update(W, self.C, k_mean, W @ k_mean.double() + shift.double())
        else:  # the reference: C^-1 k* from the averaged key, v* - W k and k^T C^-1 k* from the bare prompt's
            u = torch.linalg.solve(self.C, k_mean.double())
            delta = torch.outer(shift.double(), u) / (k_bare.double() @ u)
        self._add(self.layer, delta)
        return [{**info, "layer": self.layer, "update_norm": float(delta.norm())}]


def trace_and_edit(model, tokenizer, cases: list[EditCase], layers: list[int], samples: int | None = None,
                   progress: bool = True, **settings) -> list[dict]:
    """Does causal tracing say where to edit? (Hase et al. 2023; the LTE paper's third criticism.)
    Per (fact, layer): the traced effect of restoring the MLP outputs at the subject's last token at
    that layer (p restored - p corrupted), and how well a ROME edit of that layer alone works:
    reliability (the new target exact, teacher-forced) and generality (mean token accuracy on the
    rephrasings). One editor per layer (`settings` for ROME), reset between facts; the model is left
    as found."""
    from ..tracing import trace
    effects = {}
    for c in tqdm(cases, desc="tracing", disable=not progress, leave=False):
        t = trace(model, tokenizer, c.prompt, c.subject, kind="mlp", progress=False,
                  **({} if samples is None else {"samples": samples}))
        effects[c.case_id] = t.at_last_subject_token() - t.p_corrupt
    rows = []
    for layer in tqdm(layers, desc="ROME at each layer", disable=not progress, leave=False):
        editor = ROME(model, tokenizer, layer=layer, **settings)
        for c in cases:
            editor.edit(c)
            (s,) = editor.score([c.prompt], [c.target_new])
            reph = editor.score(c.rephrase_prompts, [c.target_new] * len(c.rephrase_prompts)) if c.rephrase_prompts else []
            rows.append({"fact": c.prompt, "layer": layer, "traced effect": float(effects[c.case_id][layer]),
                         "reliability": s.exact, "generality": float(np.mean([x.token_acc for x in reph])) if reph else None})
            editor.reset()
        model = editor.detach()
    return rows
