"""What every editor that writes into MLP down-projection weights shares (ROME, MEMIT, AlphaEdit,
MEND): the original weights kept for reset(), the groups of edits (one per edit() call for the
batched methods, one per case otherwise) that remove() replays from the original weights, the
edited layers' Frobenius norm after each group (`norms`), and saving and loading the weights.

An update solved on weights that held an edit can't be subtracted exactly, so remove() replays.

What it does not do: compute an update (a subclass's `_edit(group)`) or write into 4-bit weights
(refused: load the model without quantization to edit its weights).
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..data import EditCase
from ..errors import UsageError
from ..layer_stats import down_proj
from .base import Editor, EditorStateError


class WeightEditError(UsageError, ValueError):
    """An edit a weight-writing method can't make; the message names the fix."""


def packed(linear, method: str) -> str | None:
    """Why `method` can't write into `linear`, or None."""
    if type(linear) is not torch.nn.Linear:
        return (f"{method} writes into {type(linear).__name__} weights, which are packed (4-bit) and can't "
                "be changed in place; load the model without quantization (load_model(name, quantization=None)) "
                "to use it, or use GRACE, LTE, RECIPE or SERAC, which leave the weights alone")
    return None


def frobenius(tensors) -> float:
    """|W|_F of several matrices taken together, in float64."""
    return float(sum(w.detach().double().pow(2).sum() for w in tensors)) ** 0.5


class WeightEditor(Editor):
    """Weight bookkeeping over the down-projections of `layers`; a subclass implements `_edit(group)`
    and may check each case first (`_check`). `batched`: one edit() call is one group, or every
    case is its own."""

    @classmethod
    def unsupported(cls, model):
        return packed(down_proj(model, 0), cls.__name__)

    def __init__(self, model, tokenizer, layers: list[int]):
        super().__init__(model, tokenizer)
        if not layers:
            raise WeightEditError("no layer to edit: pass at least one layer index")
        self.layers = sorted(set(layers))
        self.linears = {l: down_proj(model, l) for l in self.layers}
        for linear in self.linears.values():
            if (why := packed(linear, type(self).__name__)) is not None:
                raise WeightEditError(why)
        self._originals = {l: m.weight.detach().clone() for l, m in self.linears.items()}
        self._groups: list[list[str]] = []  # case ids per group, in edit order
        self.norms: list[float] = []  # the edited layers' |W|_F (together) after each group

    def _add(self, layer: int, delta: torch.Tensor) -> None:
        with torch.no_grad():
            self.linears[layer].weight.add_(delta.to(self.linears[layer].weight))

    def weight_norm(self) -> float:
        return frobenius(m.weight for m in self.linears.values())

    def _check(self, case: EditCase) -> None:
        """Raise if `case` can't be edited (before any weight changes)."""

    def _edit(self, cases: list[EditCase]) -> list[dict]:
        """Write one group of edits into the weights; one info dict per case."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the Editor hooks
    def _apply(self, cases):
        for c in cases:  # check them all first: a refused call changes nothing
            self._check(c)
        infos = []
        groups = [cases] if self.batched else [[c] for c in cases]
        for group in tqdm(groups, desc=f"{type(self).__name__} edits", disable=len(groups) < 2, leave=False):
            infos += self._run(group)
        return infos

    def _run(self, group: list[EditCase]) -> list[dict]:
        infos = self._edit(group)
        self._groups.append([c.case_id for c in group])
        self.norms.append(self.weight_norm())
        for info in infos:
            info["weight_norm"] = self.norms[-1]
        return infos

    def _reset(self):
        with torch.no_grad():
            for l, m in self.linears.items():
                m.weight.copy_(self._originals[l])
        self.norms.clear()
        self._groups.clear()

    def _remove(self, case_id):
        groups = [[self.cases[i] for i in g if i != case_id] for g in self._groups]
        self._reset()
        for group in groups:
            if group:
                self._run(group)

    def _check_saved(self, meta, tensors):
        super()._check_saved(meta, tensors)
        if not meta.get("cases"):
            return
        for name in [f"weight.{l}" for l in self.layers] + ["norms", "group_of"]:
            if name not in tensors:
                raise EditorStateError(f"field {name!r} is missing from the saved tensors; save the editor again")
        if len(tensors["group_of"]) != len(meta["cases"]):
            raise EditorStateError(f"field 'group_of' has {len(tensors['group_of'])} entries for "
                                   f"{len(meta['cases'])} cases; save the editor again")
        for l, m in self.linears.items():
            saved = tensors[f"weight.{l}"]
            if tuple(saved.shape) != tuple(m.weight.shape):
                raise EditorStateError(f"the saved weight.{l} has shape {tuple(saved.shape)}, but layer {l}'s "
                                       f"down-projection is {tuple(m.weight.shape)}; load it on the model it was saved from")

    def _state(self):
        group_of = [g for g, ids in enumerate(self._groups) for _ in ids]
        return {**{f"weight.{l}": m.weight for l, m in self.linears.items()},
                "norms": torch.tensor(self.norms, dtype=torch.float64), "group_of": torch.tensor(group_of, dtype=torch.long)}

    def _restore(self, cases, tensors):
        self.cases = {c.case_id: c for c in cases}
        if not cases:
            return
        with torch.no_grad():
            for l, m in self.linears.items():
                m.weight.copy_(tensors[f"weight.{l}"].to(m.weight))
        self.norms = tensors["norms"].tolist()
        groups: dict[int, list[str]] = {}
        for c, g in zip(cases, tensors["group_of"].tolist()):
            groups.setdefault(g, []).append(c.case_id)
        self._groups = list(groups.values())

    def inspect(self, prompt):
        return {**super().inspect(prompt), "layers": [f"layers.{l}.mlp.down_proj" for l in self.layers],
                "weight_norm": self.weight_norm(), "original_norm": frobenius(self._originals.values()),
                "change_norm": frobenius(m.weight - self._originals[l] for l, m in self.linears.items()),
                "norms": list(self.norms)}
