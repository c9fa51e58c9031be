"""SERAC, Semi-parametric Editing with a Retrieval-Augmented Counterfactual model (Mitchell et al.,
ICML 2022): edits are kept as text, a scope classifier decides per query whether one applies, and
only then does a counterfactual model answer, with that edit in hand. The base model is never
changed, and answers every query out of scope.

    edit:   the edit's text e = "prompt target_new", embedded once by the classifier (`scope.py`)
    query:  j = argmax_i g(e_i, q);   in scope if g(e_j, q) > 0.5
            in scope:      the counterfactual model answers from [e_j ; q]
            out of scope:  the base model answers q, exactly as before (its own batches)

The reference trains a small separate model (T5-small) as the counterfactual model, and it must
share the base model's tokenizer. Here it is the base model itself, reading the edit as text in
the "[Updated Information] ... [Query] ..." template of ICE and LTE, either as it is
(`counterfactual="prompt"`) or with LTE's aligned adapter switched on for in-scope queries only
(`counterfactual="lte"`, the default where that adapter exists: the shipped one for the CPU
model). Either shares the tokenizer by construction and needs no training of its own. Measured on
100 sequential CounterFact edits (`bench_recipe compare --methods serac serac-prompt`): generality
0.22 as it is, 0.94 with the adapter, which was trained to answer from such a text; a 270M base
model reading an edit does not carry it to a rephrasing. The classifier is what SERAC trains, and
what LTE's second criticism is about: a wrong in/out decision is a wrong answer.

What it does not do: train the classifier (see `scope.py` and `python -m kedit_teach train serac`).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .. import alignment, scope
from ..memory import Hit, VectorMemory
from ..models import format_prompt, update_prompt
from .base import Editor, EditorStateError
from .recipe import SHOWN, Decision

COUNTERFACTUALS = ("auto", "prompt", "lte")


class SERAC(Editor):
    name = "serac"
    summary = ("keeps edits as text; a trained classifier decides per query whether one applies, and only "
               "then the model answers with it in front: unrelated prompts run unchanged")
    trained = ("classifier", "a scope classifier", "SERAC(model, tok, classifier=<its folder>)")

    def __init__(self, model, tokenizer, classifier: str | Path | scope.ScopeClassifier = "default",
                 counterfactual: str = "auto", threshold: float | None = None, encoder=None):
        """classifier: "default" (yours from `train serac`, else the shipped one), a folder, or a
        ScopeClassifier. counterfactual: "prompt" (the base model reads the edit), "lte" (LTE's
        aligned adapter reads it, on for in-scope queries only) or "auto" ("lte" where an LTE
        adapter for this model exists, else "prompt"). threshold: the in-scope probability
        (default the classifier's, 0.5)."""
        super().__init__(model, tokenizer)
        if counterfactual not in COUNTERFACTUALS:
            raise ValueError(f"counterfactual={counterfactual!r}: use 'prompt' (the base model reads the edit), "
                             "'lte' (LTE's aligned adapter reads it) or 'auto'")
        if isinstance(classifier, scope.ScopeClassifier):
            self.classifier, self.record = classifier, None
        else:
            path = scope.default_path() if classifier == "default" else Path(classifier)
            self.classifier, self.record = scope.load_classifier(path, encoder)
        self.threshold = self.classifier.config.threshold if threshold is None else float(threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold={threshold!r} is a probability: use a value in [0, 1] (default 0.5)")
        adapter = alignment.default_adapter(str(getattr(model, "kedit_name", None)))
        if counterfactual == "auto":
            counterfactual = "lte" if alignment.is_adapter(adapter) else "prompt"
        self.counterfactual, self.adapter_name = counterfactual, None
        if counterfactual == "lte":
            if not alignment.is_adapter(adapter):
                raise alignment.AdapterError(
                    f"no LTE adapter for model {getattr(model, 'kedit_name', None)!r} to read the edits with: "
                    "train one (`python -m kedit_teach train lte --model NAME`) or use counterfactual='prompt'")
            self.model, _ = alignment.load_adapter(model, adapter)
            self.model.base_model.disable_adapter_layers()
            self.adapter_name = adapter.name
        self.memory = VectorMemory(dim=self.classifier.encoder.config.hidden_size, metric="dot")
        self._scored: dict[str, list[Hit]] = {}  # query -> its most likely edits, until the store changes
        self._fingerprint = self.classifier.fingerprint()
        self.classifier.traced()  # now, as RECIPE does, rather than inside the first edit

    def config(self):
        return {"classifier": self._fingerprint, "threshold": self.threshold, "counterfactual": self.counterfactual}

    def _detach(self):
        if self.adapter_name is not None:  # peft's LoRA layers out, the original Linear modules back in
            self.model = self.model.unload()
            self.adapter_name = None

    # ------------------------------------------------------------------ the edit memory
    def _apply(self, cases):
        with torch.inference_mode():
            h = self.classifier.embed([c.descriptor for c in cases], "edit text (prompt + target_new)")
        self.memory.add_vectors(h.numpy(), [c.descriptor for c in cases], [c.case_id for c in cases])
        self._scored.clear()
        return [{"descriptor": c.descriptor, "memory_size": len(self.memory)} for c in cases]

    def _remove(self, case_id):
        self.memory.remove(case_id)
        self._scored.clear()

    def _reset(self):
        self.memory.clear()
        self._scored.clear()

    def _state(self):
        ids = list(self.cases)
        return {"embeddings": torch.from_numpy(self.memory.vectors(ids))} if ids else {}

    def _check_saved(self, meta, tensors):
        super()._check_saved(meta, tensors)
        n, width = len(meta.get("cases", [])), self.memory.dim
        got = tuple(tensors["embeddings"].shape) if "embeddings" in tensors else (0, width)
        if got != (n, width):
            raise EditorStateError(f"the embeddings have shape {got}, but {n} cases need {(n, width)}; "
                                   "the two files come from different saves, save the editor again")

    def _restore(self, cases, tensors):
        if cases:
            self.memory.add_vectors(tensors["embeddings"].numpy(), [c.descriptor for c in cases],
                                    [c.case_id for c in cases])
        self.cases = {c.case_id: c for c in cases}

    # ------------------------------------------------------------------ the classifier's decision
    def retrieve(self, prompts: list[str]) -> list[Decision]:
        """The classifier's decision for each raw prompt: the stored edits most likely in scope
        (scores are probabilities g), and the one whose edit applies, if g > threshold."""
        todo = list(dict.fromkeys(p for p in prompts if p not in self._scored))
        if todo:
            for p in todo:
                format_prompt(self.tokenizer, p)  # the same empty-prompt error as every editor
            with torch.inference_mode():
                hits = self.memory.search_vectors(self.classifier.embed(todo, "query").numpy(), SHOWN)
                g = [self.classifier.probability_of(torch.tensor([h.score for h in row])).tolist() for row in hits]
            for p, row, probs in zip(todo, hits, g):
                self._scored[p] = [Hit(h.id, h.text, prob) for h, prob in zip(row, probs)]
        # the threshold is applied here, not cached, so a slider can move it between queries
        decisions = []
        for p in prompts:
            top = self._scored[p]
            j = scope.in_scope_of([h.score for h in top], self.threshold)
            decisions.append(Decision(p, top, self.threshold, self.threshold, None if j is None else top[j].id))
        return decisions

    def in_scope(self, prompts: list[str]) -> list[str | None]:
        """The case_id whose edit applies to each prompt, or None (the base model answers)."""
        if self._off or not len(self.memory):
            return [None] * len(prompts)
        return [d.attached for d in self.retrieve(prompts)]

    def acts_on(self, prompts):
        return [c is not None for c in self.in_scope(prompts)]

    def model_inputs(self, prompts):
        return [format_prompt(self.tokenizer, p if c is None else update_prompt([self.cases[c].descriptor], p))
                for p, c in zip(prompts, self.in_scope(prompts))]

    @contextlib.contextmanager
    def _batch_context(self, key_positions):
        on = self.adapter_name is not None and self._acting  # only in-scope queries meet the adapter
        if on:
            self.model.base_model.enable_adapter_layers()
        try:
            yield
        finally:
            if on:
                self.model.base_model.disable_adapter_layers()

    def inspect(self, prompt):
        """The stored edits most likely in scope with their probabilities, the decision, and which
        model answered."""
        d = self.retrieve([prompt])[0] if len(self.memory) and not self._off else Decision(prompt, [], 0.0, 0.0, None)
        model = {"prompt": "counterfactual: the base model reading the edit",
                 "lte": "counterfactual: LTE's aligned adapter reading the edit"}[self.counterfactual]
        return {**super().inspect(prompt), "memory_size": len(self.memory), "threshold": self.threshold,
                "scope": [{"case_id": h.id, "edit": h.text, "probability": h.score} for h in d.top],
                "in_scope": d.attached, "answered_by": "base model" if d.attached is None else model}
