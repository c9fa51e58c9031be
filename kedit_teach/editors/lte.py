"""LTE, Learning to Edit (Jiang et al., 2024): retrieval-augmented editing with an aligned model.

Inference phase (Sec. 3.2): an edit is an insert of its descriptor into a vector memory. For each
query, the top-k descriptors (k = 3 in the paper) are retrieved with the query text alone, never its
target, and put in front of it with the same "[Updated Information] ... [Query] ..." template and
`format_prompt` used to train the adapter. The alignment phase (see `alignment.py`) taught a LoRA
adapter to use relevant facts and ignore irrelevant ones.

The adapter is switched on only for prompts that carry retrieved facts. With an empty memory, and
inside `unedited()`, the model is the base model bit for bit, so `reset()` restores its outputs
exactly and locality is measured against the model the user started from. Without an adapter
(`adapter=None`) this is plain retrieval-augmented in-context editing: the paper's "w/o training" row.

What it does not do: train the adapter itself (`train_alignment` delegates to `alignment.py`) or
hold vectors (see `memory.py`).
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

from .. import alignment
from ..memory import Hit, VectorMemory
from ..models import format_prompt, load_encoder, update_prompt
from .base import Editor


class LTE(Editor):
    name = "lte"
    summary = ("retrieves the edit as text and reads it with a trained LoRA adapter: rephrasings work, "
               "and the retrieved text also reaches unrelated prompts")

    def __init__(self, model, tokenizer, memory: VectorMemory | None = None, k: int = 3,
                 adapter: str | Path | None = "default"):
        """adapter: "default" (yours from `train lte`, else the one shipped for this preset), a folder, or None (unaligned)."""
        super().__init__(model, tokenizer)
        self._hits: dict[str, list[Hit]] = {}  # prompt -> retrieval, until the memory or k changes
        self.k = k
        self.memory = memory if memory is not None else VectorMemory(load_encoder())
        self.record: dict | None = None
        self.adapter_name: str | None = None
        if adapter is not None:
            self.attach(self._adapter_path(adapter))

    def _adapter_path(self, adapter) -> Path:
        if adapter != "default":
            return Path(adapter)
        name = getattr(self.model, "kedit_name", None)
        path = alignment.default_adapter(str(name))
        if not alignment.is_adapter(path):
            raise alignment.AdapterError(
                f"no LTE adapter for model {name!r}: none ships with the package and none was "
                f"trained into {alignment.trained_adapter(str(name))}. Train one with "
                f"`python -m kedit_teach train lte --model {name}`, pass adapter=<folder>, or use "
                "adapter=None (unaligned LTE, i.e. retrieval + in-context editing)")
        return path

    @property
    def k(self) -> int:
        return self._k

    @k.setter
    def k(self, value: int) -> None:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"k={value!r}: retrieve at least one descriptor (the paper uses k=3)")
        self._k = value
        self._hits.clear()

    @property
    def aligned(self) -> bool:
        return self.adapter_name is not None

    def attach(self, path: str | Path) -> None:
        """Load a trained alignment adapter (LoRA) onto the model."""
        if self.aligned:
            raise ValueError("this LTE editor already has an adapter; build a new editor on a fresh model")
        self.model, self.record = alignment.load_adapter(self.model, path)
        self.adapter_name = Path(path).name
        self.model.base_model.disable_adapter_layers()

    def _detach(self):
        if self.aligned:  # peft's LoRA layers out, the original Linear modules back in
            self.model = self.model.unload()
            self.adapter_name, self.record = None, None

    def config(self):
        return {"k": self.k, "adapter": self.adapter_name, "metric": self.memory.metric}

    # ------------------------------------------------------------------ the alignment phase
    def train_alignment(self, cases, held_out=(), data: alignment.AlignmentConfig | None = None,
                        train: alignment.TrainConfig | None = None, out: str | Path | None = None,
                        sources: list[str] | None = None) -> dict:
        """Build the threefold data from `cases`, train a LoRA adapter, attach it (and save it to `out`)."""
        if self.aligned:
            raise ValueError("this LTE editor already has an adapter; build LTE(model, tok, adapter=None) "
                             "on a fresh model to train another")
        data, train = data or alignment.AlignmentConfig(), train or alignment.TrainConfig()
        examples = alignment.build_examples(cases, held_out, data, self.memory.encoder)
        peft_model = alignment.add_lora(self.model, train)
        start = time.perf_counter()
        losses = alignment.train_lora(peft_model, self.tokenizer, examples, train)
        self.record = alignment.make_record(str(getattr(self.model, "kedit_name", "model")),
                                            self.model.config.model_type, examples, train,
                                            data, losses, time.perf_counter() - start, sources or [])
        self.model = peft_model
        self.model.base_model.disable_adapter_layers()
        self.adapter_name = Path(out).name if out else "trained"
        if out:
            alignment.save_adapter(self.model, out, self.record)
        self._hits.clear()
        return self.record

    # ------------------------------------------------------------------ the inference phase
    def _apply(self, cases):
        self.memory.add([c.descriptor for c in cases], [c.case_id for c in cases])
        self._hits.clear()
        return [{"descriptor": c.descriptor, "memory_size": len(self.memory)} for c in cases]

    def _remove(self, case_id):
        self.memory.remove(case_id)
        self._hits.clear()

    def _reset(self):
        self.memory.clear()
        self._hits.clear()

    def _restore(self, cases, tensors):
        self._apply(cases)  # re-encoding the descriptors rebuilds the same memory
        self.cases = {c.case_id: c for c in cases}

    def retrieve(self, prompts: list[str]) -> list[list[Hit]]:
        """Top-k descriptors per prompt, from the prompt text alone."""
        if self._off or not len(self.memory):
            return [[] for _ in prompts]
        todo = list(dict.fromkeys(p for p in prompts if p not in self._hits))
        if todo:
            self._hits.update(zip(todo, self.memory.search(todo, self.k)))
        return [self._hits[p] for p in prompts]

    def model_inputs(self, prompts):
        return [format_prompt(self.tokenizer, update_prompt([h.text for h in hits], p) if hits else p)
                for p, hits in zip(prompts, self.retrieve(prompts))]

    @contextlib.contextmanager
    def _batch_context(self, key_positions):
        on = self.aligned and not self._off and len(self.memory) > 0  # facts in the prompt
        if on:
            self.model.base_model.enable_adapter_layers()
        try:
            yield
        finally:
            if on:
                self.model.base_model.disable_adapter_layers()

    def inspect(self, prompt):
        hits = self.retrieve([prompt])[0]
        return {**super().inspect(prompt), "k": self.k, "aligned": self.aligned,
                "retrieved": [{"case_id": h.id, "descriptor": h.text, "score": h.score} for h in hits],
                "memory_size": len(self.memory)}
