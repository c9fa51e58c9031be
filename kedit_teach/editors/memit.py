"""MEMIT (Meng et al., ICLR 2023) and AlphaEdit (Fang et al., ICLR 2025): a batch of edits written
into the MLP down-projections of a range of layers, by least squares on keys and residuals.

MEMIT, for one group of edits (Alg. 1):
    z_i      the residual stream at the top edited layer, at subject i's last token, plus a delta
             optimised so that the model says target_new_i (the value of editors/locate.py)    Eq. 16
    for each layer l, lowest first, on the weights the lower layers' updates already changed:
      K      the keys at l, one row per edit and template                                       [n T, d_k]
      R      (z - h) / (layers left), h the top layer's output now, per row: the share of the
             remaining shift that layer l takes on                                              Alg. 1: spread
      Delta  R^T K (lambda C + K^T K)^-1, solved in float64                                    Eq. 14

AlphaEdit changes the solve only: the update is projected onto the null space of the keys the model
already has (P from C's small eigenvalues, `layer_stats.null_space`), so that Delta K_0 ~ 0, and the
keys of earlier edits (K_p) enter the solve, so that later edits leave them alone:
      Delta  R^T K P (K_p^T K_p P + K^T K P + l2 I)^-1                    AlphaEdit's closed form

The Gemma-3 trap. MEMIT's derivation assumes that the down-projection's output is added to the
residual stream as it is. Gemma-3 puts `post_feedforward_layernorm` between the two: the residual
gains RMSNorm(m) (1 + w), not m. So R above is a change of the residual stream, and a change of m
has to be found that produces it. `mlp_shift` solves for it through the norm: L-BFGS from the current
m to an m whose normed output is nearest the wanted one, rescaled to the multiple nearest the current
m, since the norm forgets the scale. Starting from m matters: the norm's gains on Gemma-3-270M's
layers 2-4 run from about 0 to several hundred, and an exact preimage (the wanted output divided by
the gains) lies far from m; on one CounterFact edit it left 2.5 times the shift it should have made,
against 0.56 from m. Shifts the norm can't produce (it fixes the output's size) stay in the
residual and are passed on to the next layer, as MEMIT passes on any shortfall. `through_norm=False`
uses R as the down-projection's shift, as the public implementations would; on Gemma-3 that wrecks
the layers (see tests/test_memit.py). Llama and Qwen have no such norm: R is used as it is.

Choices, and why:
- layers default to `default_memit_layers` (1/8 to 1/4 of the depth: 2-4 of Gemma-3-270M's 18; EasyEdit
  uses 4-8 of Llama-2-7B's 32);
- a row of K and R per (edit, template): the reference averages the keys over its templates but
  measures h on the bare prompt, so its solve fits one context and its check another; on Gemma-3
  that left more of the shift unmade than before the update (2.2 times it, on one CounterFact edit,
  against 0.85 per template);
- a batch's values are optimised together (`LocateEditor.values`): one call of 100 CounterFact
  edits costs AlphaEdit 4.0 s an edit on 2 CPU cores, against about 23 s for edits one at a time;
- 5 prefixes for the templates, as the reference (1 + 5); lambda = 15000, as EasyEdit's Llama config;
- AlphaEdit's threshold is the reference's 2e-2 on C's eigenvalues (C = E[k k^T], as theirs): it keeps
  67-77% of the directions at layers 2-4 of Gemma-3-270M (the reference reports about 70% on
  Llama-3); its l2 is the reference repository's 10.

remove() replays the other groups from the original weights (AlphaEdit's K_p is rebuilt with them).
What it does not do: 4-bit weights (refused, as ROME).
"""
from __future__ import annotations

import torch

from ..data import EditCase
from ..layer_stats import null_space
from ..models import decoder_of
from .base import EditorStateError
from .locate import LocateEditor


def default_memit_layers(model) -> list[int]:
    n = model.config.num_hidden_layers
    lo = max(1, n // 8)
    return list(range(lo, min(max(lo + 1, n // 4), n - 1) + 1))


def mlp_shift(norm, m: torch.Tensor, shift: torch.Tensor, steps: int = 200) -> torch.Tensor:
    """The change of the pre-norm MLP output m [n, d] that moves norm(m) by `shift` (as near as the
    norm allows). norm=None: the MLP output enters the residual as it is, so the change is `shift`."""
    if norm is None:
        return shift
    m = m.float()
    with torch.no_grad():
        want = norm(m) + shift.float()
    x = m.clone().requires_grad_(True)  # from m: a solution near m, not any (see the module docstring)
    opt = torch.optim.LBFGS([x], max_iter=steps, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = (norm(x) - want).pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    x = x.detach()
    # RMSNorm ignores the scale of x: take the multiple of x nearest m, the smallest change of W's output
    scale = (x * m).sum(-1, keepdim=True) / x.pow(2).sum(-1, keepdim=True)
    scale = torch.where(scale > 0, scale, m.norm(dim=-1, keepdim=True) / x.norm(dim=-1, keepdim=True))
    return (scale * x - m).double()


class MEMIT(LocateEditor):
    name = "memit"
    summary = ("writes a batch of facts into the MLPs of several layers at once, each layer taking a share "
               "of the change; like ROME it moves the weights, and many edits wear them out")
    batched = True

    def __init__(self, model, tokenizer, layers: list[int] | None = None, steps: int = 25, lr: float = 0.5,
                 kl_factor: float = 0.0625, weight_decay: float = 1e-3, clamp_norm: float = 4.0,
                 lam: float = 15000.0, through_norm: bool = True, mom2: bool = True, corpus: str = "model",
                 n_keys: int | None = None, ridge: float = 1e-3, n_prefixes: int = 5, seed: int = 0):
        super().__init__(model, tokenizer, default_memit_layers(model) if layers is None else layers, steps=steps,
                         lr=lr, kl_factor=kl_factor, weight_decay=weight_decay, clamp_norm=clamp_norm, mom2=mom2,
                         corpus=corpus, n_keys=n_keys, ridge=ridge, n_prefixes=n_prefixes, seed=seed)
        self.lam, self.through_norm = lam, through_norm
        self.top = decoder_of(model).layers[self.layers[-1]]

    def config(self):
        return {**super().config(), "lam": self.lam, "through_norm": self.through_norm}

    def _norm_after_mlp(self, layer: int):
        return getattr(decoder_of(self.model).layers[layer], "post_feedforward_layernorm", None) \
            if self.through_norm else None

    def solve(self, layer: int, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        """Eq. 14: Delta [d_out, d_k] = R^T K (lambda C + K^T K)^-1; K [n, d_k], R [n, d_out]."""
        A = self.lam * self.moment(layer) + K.T @ K
        return torch.linalg.solve(A, K.T @ R).T

    def _keys_used(self, keys: dict[int, torch.Tensor]) -> None:
        """After a group: what the solve should remember of its keys (MEMIT: nothing)."""

    def residual(self, cases: list[EditCase]) -> torch.Tensor:
        """The top edited layer's output at each subject's last token behind every template, [n * T, d]."""
        return self.read(self.top, cases, self.templates())[1].flatten(0, 1).double()

    def _edit(self, cases):
        values = self.values(cases, self.top)
        h0 = h = self.residual(cases)
        T = len(self.templates())
        z = h0 + torch.stack([d for d, _ in values]).double().repeat_interleave(T, 0)  # Eq. 16: the target residual
        keys, update = {}, 0.0
        for i, l in enumerate(self.layers):
            K, m = (x.flatten(0, 1) for x in self.read(self.linears[l], cases, self.templates()))
            K = K.double()
            R = (z - h) / (len(self.layers) - i)  # Alg. 1: spread what is left
            delta = self.solve(l, K, mlp_shift(self._norm_after_mlp(l), m, R))
            self._add(l, delta)
            keys[l], update = K, update + float(delta.pow(2).sum())
            h = self.residual(cases)  # on the weights this layer's update changed
        self._keys_used(keys)
        left = ((z - h).norm(dim=-1) / (z - h0).norm(dim=-1).clamp_min(1e-12)).view(len(cases), T)
        return [{**info, "layers": self.layers, "update_norm": update ** 0.5, "residual_left": float(r.mean())}
                for (_, info), r in zip(values, left)]


class AlphaEdit(MEMIT):
    name = "alphaedit"
    summary = ("MEMIT with every update projected away from the keys the model already uses, and from "
               "earlier edits' keys: many more edits before the weights wear out")

    def __init__(self, model, tokenizer, layers: list[int] | None = None, threshold: float = 2e-2,
                 l2: float = 10.0, **kw):
        super().__init__(model, tokenizer, layers, **kw)
        self.threshold, self.l2 = threshold, l2
        self._P: dict[int, tuple[torch.Tensor, float]] = {}
        self._edit_keys: dict[int, list[torch.Tensor]] = {l: [] for l in self.layers}  # K_p, by group

    def config(self):
        return {**super().config(), "threshold": self.threshold, "l2": self.l2}

    def prepare(self):
        super().prepare()
        for layer in self.layers:
            self.projector(layer)

    def projector(self, layer: int) -> tuple[torch.Tensor, float]:
        """(P, share of directions kept) for `layer`, cached per model and layer."""
        if layer not in self._P:
            self._P[layer] = null_space(self.model, self.tokenizer, layer, self.threshold,
                                        corpus=self.corpus, n_keys=self.n_keys)
        return self._P[layer]

    def solve(self, layer, K, R):
        """AlphaEdit's closed form, transposed: Delta^T = (P (K^T K + K_p^T K_p) + l2 I)^-1 P K^T R."""
        P, _ = self.projector(layer)
        Kp = torch.cat([K] + self._edit_keys[layer])
        A = P @ (Kp.T @ Kp) + self.l2 * torch.eye(len(P), dtype=P.dtype)
        return torch.linalg.solve(A, P @ K.T @ R).T

    def _keys_used(self, keys):
        for l, K in keys.items():  # the reference's cache_c += K K^T, kept as keys so that it can be saved
            self._edit_keys[l].append(K)

    def _reset(self):
        super()._reset()
        self._edit_keys = {l: [] for l in self.layers}

    def _state(self):
        return {**super()._state(), **{f"keys.{l}": torch.cat(ks) if ks else torch.zeros(0, self.linears[l].in_features,
                                                                                         dtype=torch.float64)
                                       for l, ks in self._edit_keys.items()}}

    def _check_saved(self, meta, tensors):
        super()._check_saved(meta, tensors)
        for l in self.layers:
            if meta.get("cases") and f"keys.{l}" not in tensors:
                raise EditorStateError(f"field 'keys.{l}' (the earlier edits' keys) is missing; save the editor again")

    def _restore(self, cases, tensors):
        super()._restore(cases, tensors)
        if cases:  # one block per group is only needed for remove(), which replays: one block is enough here
            self._edit_keys = {l: [tensors[f"keys.{l}"].double()] for l in self.layers}

    def inspect(self, prompt):
        return {**super().inspect(prompt), "null_space_kept": {l: self.projector(l)[1] for l in self.layers},
                "edit_keys": sum(len(k) for k in next(iter(self._edit_keys.values())))}
