"""The one Editor interface every method implements; widgets and the benchmark know only this.

    edit(case_or_cases) -> list of per-edit info (with timing)
    remove(case_id), reset()          reset() restores the original outputs bit for bit
    detach() -> model                 take the editor off: the model's modules and weights as they were
    generate(prompt), score(prompts, targets)
    inspect(prompt) -> what the method "saw" for this prompt (retrieved items, codebook hits, ...)
    save(path), load(path)            safetensors + JSON, never pickle

A subclass implements the method-specific hooks: `_apply`, `_remove`, `_reset`, `_detach` (remove
modules it put into the model), and optionally
`model_inputs` (how a raw prompt becomes model input text), `prompt_prefixes` (vectors put in front
of it through `inputs_embeds`, RECIPE's continuous prompts), `prefix_until` (a text after which
generation drops those vectors), `_state` / `_load_state` (tensors to save), `_check_saved`
(refuse a saved state before anything is replaced) and `inspect`.

What it does not do: evaluation loops or aggregation (see `evaluate.py`).
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..data import EditCase
from ..errors import UsageError
from ..metrics import TokenScore, generate_greedy, teacher_forced
from ..models import format_prompt

STATE_JSON, STATE_TENSORS = "editor.json", "editor.safetensors"


class EditorStateError(UsageError, ValueError):
    """A saved editor state that can't be loaded; the message says which file and field."""


class Editor:
    name = "base"
    summary = ""  # one line on how the method edits and what that implies (the tour, the arena)
    batched = False  # edit(cases) solves a batch jointly (MEMIT, AlphaEdit), not one case after another
    # (config field holding their fingerprint, what they are, how to load others) for an editor whose
    # edits depend on trained weights: a state saved with other weights is refused by name
    trained: tuple[str, str, str] | None = None

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.cases: dict[str, EditCase] = {}  # applied edits, in order
        self.detached = False
        self._off = False  # inside unedited(): editors that act at query time (LTE, RECIPE) stand aside
        self._acting = False  # in _by_prefix: the batch being run holds prompts the editor acts on
        self._count = None  # inside counting(): told the rows of each batch score() and generate() run

    @classmethod
    def unsupported(cls, model) -> str | None:
        """Why this method can't edit `model` at all (e.g. packed 4-bit weights), or None."""
        return None

    # ------------------------------------------------------------------ hooks for subclasses
    def config(self) -> dict:
        """Hyper-parameters that define this editor; saved and checked on load."""
        return {}

    def _apply(self, cases: list[EditCase]) -> list[dict]:
        """Apply edits; return one info dict per case. Batched by default, one by one if not."""
        return [{} for _ in cases]

    def _remove(self, case_id: str) -> None:
        pass

    def _reset(self) -> None:
        pass

    def _detach(self) -> None:
        """Remove what the constructor put into the model (wrappers, adapter layers); after `_reset`."""

    def _state(self) -> dict[str, torch.Tensor]:
        return {}

    def _load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def model_inputs(self, prompts: list[str]) -> list[str]:
        """The exact text the model receives for each raw prompt."""
        return [format_prompt(self.tokenizer, p) for p in prompts]

    def prompt_prefixes(self, prompts: list[str]) -> list[torch.Tensor | None] | None:
        """Per raw prompt, vectors to put in front of its embedded text (None: nothing, the default)."""
        return None

    def prefix_until(self, prompts: list[str]) -> list[str | None] | None:
        """Per raw prompt, a text after which generation drops its prefix vectors and goes on from
        the words alone (`metrics.generate_greedy`); None (the default): they stay to the end."""
        return None

    def acts_on(self, prompts: list[str]) -> list[bool] | None:
        """Per raw prompt, whether this editor acts on it at query time; None (the default): it
        treats every prompt alike. The prompts it leaves alone run in batches of their own (see
        `_by_prefix`), and `_batch_context` knows which kind it wraps (`self._acting`)."""
        return None

    def _check_saved(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Raise EditorStateError if a saved state can't be restored; runs before anything is replaced."""
        if self.trained is not None:
            field, what, how = self.trained
            saved, mine = (meta.get("config") or {}).get(field), self.config()[field]
            if saved != mine:
                raise EditorStateError(f"field 'config.{field}' is {saved!r}: these edits were made with other {what} "
                                       f"than this editor's ({mine}); load those ({how}), or edit the cases again "
                                       "with these")
        if meta.get("config") != json.loads(json.dumps(self.config())):
            raise EditorStateError(f"field 'config' {meta.get('config')} differs from this "
                                   f"editor's {self.config()}; construct the editor with the saved config")

    def _batch_context(self, key_positions: torch.Tensor) -> contextlib.AbstractContextManager:
        """Wraps each scoring/generation forward; key_positions is each row's last prompt token."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _each_batch(self, key_positions: torch.Tensor):
        with self._batch_context(key_positions):
            yield
        if self._count is not None:
            self._count(len(key_positions))

    @contextlib.contextmanager
    def counting(self, update):
        """Within this block, update(rows) is called as each batch that score() or generate() runs
        is done: a progress bar's update, for work that is one long call."""
        self._count = update
        try:
            yield
        finally:
            self._count = None

    @contextlib.contextmanager
    def unedited(self):
        """Within this block the model behaves as before any edit (for pre-edit reference scores).

        Editors that change nothing until a query arrives check `self._off`; the harness calls
        this before any edit is made, so for the others there is nothing to undo."""
        self._off = True
        try:
            yield
        finally:
            self._off = False

    # ------------------------------------------------------------------ the interface
    def prepare(self) -> None:
        """Do now the one-time work the first edit would otherwise do (ROME's and MEMIT's layer
        statistics, AlphaEdit's projectors), so that it can be timed apart from the edit; nothing by
        default. Calling it again costs nothing."""

    def edit(self, cases: EditCase | list[EditCase]) -> list[dict]:
        if self.detached:
            raise RuntimeError(f"this {self.name} editor was detached from its model; build a new one on it")
        cases = [cases] if isinstance(cases, EditCase) else list(cases)
        for c in cases:
            if not isinstance(c, EditCase):
                raise TypeError(f"edit() takes EditCase objects, got {type(c).__name__}; "
                                "build one with EditCase(case_id=..., subject=..., prompt=..., target_new=...)")
            if c.case_id in self.cases:
                raise ValueError(f"case {c.case_id!r} is already edited; remove({c.case_id!r}) it first "
                                 "or give the new edit another case_id")
        if len({c.case_id for c in cases}) != len(cases):
            raise ValueError("the same case_id appears twice in one edit() call")
        start = time.perf_counter()
        infos = self._apply(cases)
        seconds = (time.perf_counter() - start) / max(len(cases), 1)
        for c, info in zip(cases, infos):
            self.cases[c.case_id] = c
            info.update(case_id=c.case_id, edit_s=seconds)
        return infos

    def fill(self, cases: list[EditCase]) -> str:
        """Timing only (timing.py, RECIPE's Table 3): put `cases` in the store as cheaply as the method
        allows, so that a query can be timed with 10,000 edits in place. Returns how it was done.
        By default they are real edits, made in one edit() call."""
        self.edit(cases)
        return "real edits"

    def remove(self, case_id: str) -> None:
        if case_id not in self.cases:
            known = ", ".join(list(self.cases)[:10]) or "none"
            raise KeyError(f"no edit with case_id {case_id!r} to remove (edited: {known})")
        self._remove(case_id)
        del self.cases[case_id]

    def reset(self) -> None:
        self._reset()
        self.cases.clear()

    def detach(self):
        """Undo every edit and take out whatever this editor put into the model, so the next method
        gets the model exactly as it was before this editor was built (modules and weights). Returns
        that model: on one loaded model (a 7B on Colab) methods take turns this way."""
        if not self.detached:
            self.reset()
            self._detach()
            self.detached = True
        return self.model

    def _by_prefix(self, prompts: list[str], run) -> list:
        """run(indices, prefixes) over the prompts the editor acts on (they get vectors, or
        `acts_on` says so) and, apart, those it leaves alone.

        The others take the plain `input_ids` path in batches of their own, so an unrelated query
        is computed exactly as it would be without this editor.
        """
        prefixes = self.prompt_prefixes(prompts)
        acted = self.acts_on(prompts) if prefixes is None else [p is not None for p in prefixes]
        if acted is None:
            return run(list(range(len(prompts))), None)
        out: list = [None] * len(prompts)
        try:
            for attached in (True, False):  # the acted-on first: `generate` hands rows on to the others
                idx = [i for i, a in enumerate(acted) if a == attached]
                if idx:
                    self._acting = attached
                    pre = [prefixes[i] for i in idx] if attached and prefixes is not None else None
                    for i, r in zip(idx, run(idx, pre)):
                        out[i] = r
        finally:
            self._acting = False
        return out

    def score(self, prompts: list[str], targets: list[str], **kw) -> list[TokenScore]:
        """Teacher-forced argmax at each target position. Never looks at targets to pick context."""
        texts = self.model_inputs(prompts)
        return self._by_prefix(prompts, lambda idx, pre: teacher_forced(
            self.model, self.tokenizer, [texts[i] for i in idx], [targets[i] for i in idx],
            on_batch=self._each_batch, prefixes=pre, **kw))

    def generate(self, prompt: str | list[str], max_new_tokens: int | list[int] = 20, **kw):
        prompts = [prompt] if isinstance(prompt, str) else prompt
        texts = self.model_inputs(prompts)
        budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
        until = self.prefix_until(prompts)
        said: dict[int, str] = {}  # prompt -> its text up to its `until` text, said before its budget ran out
        left: dict[int, int] = {}  # ... and the tokens it has left, decoded from the words alone
        more: dict[int, str] = {}  # ... and what it said then

        def run(idx, pre, joining=()):
            rows = [*idx, *joining]
            found: dict[int, int] = {}
            outs = generate_greedy(
                self.model, self.tokenizer, [texts[i] + said.get(i, "") for i in rows],
                [budgets[i] for i in idx] + [left[i] for i in joining], on_batch=self._each_batch, prefixes=pre,
                until=None if until is None or pre is None else [until[i] for i in idx], going_on=found, **kw)
            said.update({idx[r]: outs[r] for r in found})
            left.update({idx[r]: n for r, n in found.items()})
            more.update(zip(joining, outs[len(idx):]))
            return outs[:len(idx)]

        # prompted rows that say their answer go on as plain text, in the batches of the unprompted
        # rows (which _by_prefix runs after them): one more row in a batch costs less than a call
        waiting = lambda: [i for i in left if i not in more]  # noqa: E731
        out = self._by_prefix(prompts, lambda idx, pre: run(idx, pre, () if pre is not None else waiting()))
        if waiting():  # no unprompted rows to join
            run([], None, waiting())
        for i, text in more.items():
            out[i] += text
        return out[0] if isinstance(prompt, str) else out

    def inspect(self, prompt: str) -> dict:
        return {"method": self.name, "model_input": self.model_inputs([prompt])[0],
                "edits": len(self.cases)}

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"method": self.name, "config": self.config(),
                "cases": [c.to_dict() for c in self.cases.values()]}
        (path / STATE_JSON).write_text(json.dumps(meta, indent=1, ensure_ascii=False))
        tensors = {k: v.detach().contiguous().cpu() for k, v in self._state().items()}
        save_file(tensors, str(path / STATE_TENSORS))
        return path

    def load(self, path: str | Path) -> "Editor":
        """Replace this editor's edits with a saved state (same method and config)."""
        path = Path(path)
        meta_file, tensor_file = path / STATE_JSON, path / STATE_TENSORS
        for f in (meta_file, tensor_file):
            if not f.exists():
                raise EditorStateError(f"{f} is missing: pass the folder written by editor.save(path)")
        try:
            meta = json.loads(meta_file.read_text())
            tensors = load_file(str(tensor_file))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise EditorStateError(f"{meta_file} is not valid JSON ({e}); save the editor again") from e
        except Exception as e:  # safetensors raises its own error types for a corrupt header
            raise EditorStateError(f"{tensor_file} is corrupt ({e}); save the editor again") from e
        if not isinstance(meta, dict) or meta.get("method") != self.name:
            raise EditorStateError(f"{meta_file}: field 'method' is {meta.get('method') if isinstance(meta, dict) else meta!r}"
                                   f", but this is a {self.name!r} editor; load it into the matching editor")
        try:
            self._check_saved(meta, tensors)
        except EditorStateError as e:
            raise EditorStateError(f"{meta_file}: {e}") from e
        try:
            cases = [EditCase.from_dict(d) for d in meta.get("cases", [])]
        except ValueError as e:
            raise EditorStateError(f"{meta_file}: field 'cases': {e}") from e
        self.reset()
        self._restore(cases, tensors)
        return self

    def _restore(self, cases: list[EditCase], tensors: dict[str, torch.Tensor]) -> None:
        """Bring back saved edits. Default: tensors hold the whole state, cases are bookkeeping."""
        self._load_state(tensors)
        self.cases = {c.case_id: c for c in cases}
