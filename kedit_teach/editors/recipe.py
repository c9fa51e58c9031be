"""RECIPE, RetriEval-augmented ContInuous Prompt lEarning (Chen et al., EMNLP 2024): lifelong editing
with continuous prompts, gated by a learned Knowledge Sentinel. The LLM is never changed.

An edit (Sec. 3.1, "Construction and Update of the Knowledge Retrieval Repository") is one pass of
the trained modules over its knowledge statement k = "prompt target_new" (and the LLM's embeddings
of target_new, which the prompt is built on; see prompt_learning.PromptGenerator):

    K_t = K_{t-1} + {(r_k, p_k)}      key r_k in a faiss inner-product `VectorMemory`,
                                      prompt p_k (n_prompt_tokens x hidden) in a tensor store

For a query q (Sec. 3.2, "Dynamic Prompt Retrieval with Knowledge Sentinel") the top-1 key j is
looked up with the *prompt alone*, never its target, and

    KS(q) = p_kj   if r~_q . r_kj > r~_q . r_Theta,   else nothing

and the model answers a_q = f_llm(p_kj + f_emb(q)) (Sec. 3.3): the prompt vectors go in through
`inputs_embeds`, right after <bos>, so batching, left padding and a KV cache stay consistent
(`metrics.splice_prefixes`). A query that gets no prompt runs through the plain `input_ids` path,
so the model answers it exactly as before, and `reset()` restores the original outputs bit for bit.

Ablations (the deck's Table 4): `sentinel=False` gates with a fixed `threshold` on the same
scores; `prompts=False` retrieves but attaches nothing; both together.

Not in the paper: `until_answer=True` drops the prompt from a generation once it has said the
attached knowledge's new answer, and the model writes on from the words alone. A prompt built on
the answer's embeddings keeps pulling towards it ("Norway Norway Norway"); L_flu trains the prompts
to let go past the answer, and this rule lets go exactly. Scoring is unchanged.
`relation_check=True` gives a query that names a stored edit's subject that edit's prompt only if
it asks about the same relation, judged with the subject taken out (`relation_check.py`): the
sentinel finds the subject and can't tell "where is the Eiffel Tower" from "who designed it".
`statement=True` puts the attached knowledge's statement in front of its prompt vectors, as the
LLM's own token embeddings of the text: the vectors say short answers and carry rephrasings, the
model copies long answers from the text (ZsRE, one edit stored: generation reliability 0.73 with the
vectors alone, 0.77 with the text alone, 0.95 with both; RESULTS). The prefix grows by the
statement's tokens; retrieval and the sentinel are unchanged. `statement="long"` does so only for
new answers longer than `SHORT_ANSWER` tokens, the ones six vectors do not carry: in front of a
cloze query the text makes the model write on in its own words ("... by navigating the
Stockholm-bound metro line") where the vectors alone give the short answer as the next word.

What it does not do: train the modules (see `prompt_learning.py`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import prompt_learning as pl
from .. import relation_check as rc
from ..memory import Hit, VectorMemory
from ..models import add_special, format_prompt
from .base import Editor, EditorStateError

SHOWN = 5  # knowledge entries inspect() lists per query
# Six vectors say answers of up to three tokens (ZsRE, one edit stored, generation exact 0.91 / 0.94
# / 0.91 for 1 / 2 / 3 tokens) and fail longer ones (0.50 / 0.50 / 0.12 for 4 / 5 / 6+; RESULTS).
SHORT_ANSWER = 3
STATEMENT = (False, True, "long")  # RECIPE(statement=...): never, every attached prompt, long answers
# The options, none in the paper, that together meet every quality target the course set RECIPE on
# ZsRE's questions, the teaching set and CounterFact (RESULTS, "The statement in front of the vectors").
# Off by default: RECIPE() is the paper's, as the grid compares methods as published.
COURSE_OPTIONS = {"relation_check": True, "until_answer": True, "statement": "long"}


def answer_tokens(tokenizer, answer: str) -> int:
    """How many tokens the new answer takes as the words after a prompt (with its leading space)."""
    return len(tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class Decision:
    """What the sentinel rule decided for one query. Scores are r~_q . r / sqrt(d)."""
    query: str
    top: list[Hit]       # the most similar stored knowledge, best first
    sentinel: float      # r~_q . r_Theta / sqrt(d)
    gate: float          # what the top score must beat: the sentinel's score or a fixed threshold
    attached: str | None  # case_id of the knowledge whose prompt is attached, or None
    relation: float | None = None  # the relation check's best rel, where it decided (see relation_check.py)


class RECIPE(Editor):
    name = "recipe"
    summary = ("stores the edit as a few prompt vectors; a learned sentinel attaches them only to queries "
               "close to the knowledge, so unrelated prompts run unchanged")
    trained = ("modules", "RECIPE modules", "RECIPE(model, tok, modules=<their folder>)")

    def __init__(self, model, tokenizer, modules: str | Path | pl.RecipeModules = "default",
                 sentinel: bool = True, threshold: float = 0.0, prompts: bool = True, encoder=None,
                 until_answer: bool = False, relation_check: bool | str | Path = False,
                 statement: bool | str = False):
        """modules: "default" (yours from `train recipe`, else the ones shipped for this preset),
        a folder, or RecipeModules. sentinel=False gates with `threshold` instead (Table 4, "- KS");
        prompts=False retrieves but attaches nothing ("- CPT"); until_answer=True: generation drops
        the prompt once it has said the new answer; relation_check: True (yours from `train relation`,
        else the shipped one) or a folder: queries naming a stored subject are decided by relation;
        statement=True: the knowledge statement, as token embeddings, goes before the prompt vectors;
        "long": only where the new answer is longer than SHORT_ANSWER tokens."""
        super().__init__(model, tokenizer)
        if isinstance(modules, pl.RecipeModules):
            pl.check_fits(modules.config, model, "these modules")
            self.modules, self.record = modules, None
        else:
            self.modules, self.record = pl.load_modules(self._modules_path(modules), model, encoder)
        self.use_prompts, self.until_answer, self.statement = prompts, bool(until_answer), statement
        self._sentinel, self._threshold = sentinel, float(threshold)
        self.memory = VectorMemory(dim=self.modules.key_dim, metric="dot")
        self._prompts: dict[str, torch.Tensor] = {}
        self._decisions: dict[str, Decision] = {}  # query -> decision, until the store changes
        self._texts: dict[str, torch.Tensor] = {}  # case_id -> its statement's token embeddings (statement=True)
        self.relation, self._check = None, None  # the check in use, and the one loaded (kept when switched off)
        self._masked: dict[str, torch.Tensor] = {}  # f_rm features of texts the check has masked
        if relation_check and relation_check is not True:  # a folder; True loads the default when switched on
            self._check, _ = rc.load_check(relation_check)
        self.relation_check = bool(relation_check)
        # The modules are fixed from here on: their sentinel and fingerprint are computed once, and
        # f_rm is traced now rather than inside the first edit (0.3 s on CPU).
        with torch.no_grad():
            self._r_theta = self.modules.r_sentinel()
        self.modules.trace()
        self._fingerprint = self.modules.fingerprint()

    @property
    def use_sentinel(self) -> bool:
        return self._sentinel

    @use_sentinel.setter
    def use_sentinel(self, value: bool) -> None:
        self._sentinel = bool(value)
        self._decisions.clear()

    @property
    def statement(self) -> bool | str:
        return self._statement

    @statement.setter
    def statement(self, value: bool | str) -> None:
        if value not in STATEMENT:
            raise ValueError(f"statement={value!r}: pass False, True (every attached prompt) or \"long\" "
                             f"(answers longer than {SHORT_ANSWER} tokens)")
        self._statement = value if value == "long" else bool(value)

    @property
    def relation_check(self) -> bool:
        return self.relation is not None

    @relation_check.setter
    def relation_check(self, value: bool) -> None:
        if value and self._check is None:  # yours from `train relation`, else the shipped one
            self._check, _ = rc.load_check(rc.default_path())
        self.relation = self._check if value else None
        self._decisions.clear()

    @property
    def threshold(self) -> float:
        """The fixed gate used when use_sentinel is False (on the same r~_q . r_k / sqrt(d) scale)."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = float(value)
        self._decisions.clear()

    def _modules_path(self, modules) -> Path:
        if modules != "default":
            return Path(modules)
        name = str(getattr(self.model, "kedit_name", None))
        path = pl.default_path(name)
        if not (path / pl.WEIGHTS_FILE).exists():
            raise pl.ModuleError(
                f"no RECIPE modules for model {name!r}: none ship with the package and none were "
                f"trained into {pl.trained_path(name)}. Train them with "
                f"`python -m kedit_teach train recipe --model {name}`, or pass modules=<folder>")
        return path

    def config(self):
        return {"modules": self._fingerprint, "sentinel": self.use_sentinel,
                "threshold": None if self.use_sentinel else self.threshold, "prompts": self.use_prompts,
                # named only when on, so saves and results from before the option keep their config
                **({"until_answer": True} if self.until_answer else {}),
                **({"statement": self.statement} if self.statement else {}),
                **({"relation_check": self.relation.fingerprint()} if self.relation else {})}

    # ------------------------------------------------------------------ the repository
    def _apply(self, cases):
        texts = [c.descriptor for c in cases]
        anchors = pl.answer_anchors(self.model, self.tokenizer, [c.target_new for c in cases],
                                    self.modules.config.n_prompt_tokens)
        with torch.inference_mode():  # one batched encoder pass, MLP_K and MLP_P
            keys, prompts = self.modules.knowledge(self.modules.features(texts, "knowledge text (prompt + target_new)"), anchors)
        self.memory.add_vectors(keys.numpy(), texts, [c.case_id for c in cases])
        self._prompts.update(zip((c.case_id for c in cases), prompts.clone()))
        self._decisions.clear()
        return [{"knowledge": t, "memory_size": len(self.memory)} for t in texts]

    def _remove(self, case_id):
        self.memory.remove(case_id)
        del self._prompts[case_id]
        self._texts.pop(case_id, None)
        self._decisions.clear()

    def _reset(self):
        self.memory.clear()
        self._prompts.clear()
        self._decisions.clear()
        self._masked.clear()
        self._texts.clear()

    def _state(self):
        ids = list(self.cases)
        if not ids:
            return {}
        return {"keys": torch.from_numpy(self.memory.vectors(ids)), "prompts": torch.stack([self._prompts[i] for i in ids])}

    def _check_saved(self, meta, tensors):
        super()._check_saved(meta, tensors)
        n, cfg = len(meta.get("cases", [])), self.modules.config
        shapes = {"keys": (n, self.modules.key_dim), "prompts": (n, cfg.n_prompt_tokens, cfg.hidden_size)}
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        if n and got != shapes:
            raise EditorStateError(f"the tensors have shapes {got}, but {n} cases need {shapes}; "
                                   "the two files come from different saves, save the editor again")

    def _restore(self, cases, tensors):
        if cases:
            self.memory.add_vectors(tensors["keys"].numpy(), [c.descriptor for c in cases], [c.case_id for c in cases])
            self._prompts = dict(zip((c.case_id for c in cases), tensors["prompts"]))
        self.cases = {c.case_id: c for c in cases}

    # ------------------------------------------------------------------ retrieval (Sec. 3.2)
    def retrieve(self, prompts: list[str]) -> list[Decision]:
        """The sentinel rule for each raw prompt. The query is the prompt alone, never a target."""
        todo = list(dict.fromkeys(p for p in prompts if p not in self._decisions))
        if todo:
            for p in todo:
                format_prompt(self.tokenizer, p)  # the same empty-prompt error as every editor
            with torch.inference_mode():
                r_q = self.modules.query(self.modules.query_features(todo))
                sentinel = self.modules.similarity(r_q, self._r_theta[None])[:, 0].tolist()
            scale = self.modules.key_dim ** 0.5
            tops = [[Hit(h.id, h.text, h.score / scale) for h in row] for row in self.memory.search_vectors(r_q.numpy(), SHOWN)]
            checks = [None] * len(todo)
            if self.relation is not None:  # every query's masked texts in one encoder pass
                checks = rc.decide(self.relation, self._features, todo,
                                   [[(h.id, self.cases[h.id].subject, self.cases[h.id].prompt) for h in top] for top in tops])
            for p, s, top, checked in zip(todo, sentinel, tops, checks):
                gate = s if self.use_sentinel else self.threshold
                attached = top[0].id if top and top[0].score > gate else None  # strictly greater
                attached, relation = checked or (attached, None)
                self._decisions[p] = Decision(p, top, s, gate, attached, relation)
        return [self._decisions[p] for p in prompts]

    def _features(self, texts: list[str]) -> torch.Tensor:
        """f_rm features of the check's masked texts, kept until reset: a stored edit's masked prompt
        comes back with every query about its subject."""
        return pl.cached_features(self.modules, texts, self._masked)

    def prompt_prefixes(self, prompts):
        if self._off or not self.use_prompts or not len(self.memory):
            return None
        return [None if d.attached is None else self._prefix(d.attached) for d in self.retrieve(prompts)]

    def _statement_text(self, case_id: str) -> str:
        return self.cases[case_id].descriptor + "\n"  # a line of its own, as a fact stated before a question

    def _stated(self, case_id: str) -> bool:
        """Whether this knowledge's statement goes in front of its vectors."""
        if self.statement == "long":
            return answer_tokens(self.tokenizer, self.cases[case_id].target_new) > SHORT_ANSWER
        return self.statement

    def _prefix(self, case_id: str) -> torch.Tensor:
        """What goes in after <bos>: the prompt vectors, after the statement's token embeddings where
        `_stated` (computed once per edit, in the space embed_tokens outputs, like the vectors)."""
        vectors = self._prompts[case_id]
        if not self._stated(case_id):
            return vectors
        if case_id not in self._texts:
            ids = self.tokenizer(self._statement_text(case_id), add_special_tokens=False, return_tensors="pt")["input_ids"]
            embed = self.model.get_input_embeddings()
            with torch.no_grad():
                self._texts[case_id] = embed(ids.to(embed.weight.device))[0].to(vectors)
        return torch.cat([self._texts[case_id], vectors])

    def prefix_until(self, prompts):
        if not self.until_answer or self.prompt_prefixes(prompts) is None:
            return None
        return [None if d.attached is None else self.cases[d.attached].target_new for d in self.retrieve(prompts)]

    def inspect(self, prompt):
        """Similarities to the closest stored knowledge, the sentinel's, the decision, the prompt
        vectors' norms and what the LLM received (its text, with the vectors marked where they go)."""
        text = self.model_inputs([prompt])[0]
        d = self.retrieve([prompt])[0] if len(self.memory) and not self._off else Decision(prompt, [], 0.0, 0.0, None)
        prefix = self.prompt_prefixes([prompt])
        prefix = None if prefix is None else prefix[0]
        vectors = None if prefix is None else self._prompts[d.attached]
        bos = self.tokenizer.bos_token or ""
        shown = text if bos and text.startswith(bos) else bos + text
        marks = "".join(f"[p{i + 1}]" for i in range(0 if vectors is None else len(vectors)))
        if vectors is not None and self._stated(d.attached):
            marks = self._statement_text(d.attached) + marks
        return {**super().inspect(prompt), "memory_size": len(self.memory),
                "knowledge": [{"case_id": h.id, "knowledge": h.text, "score": h.score} for h in d.top],
                "sentinel": d.sentinel, "gate": "sentinel" if self.use_sentinel else "threshold",
                "threshold": d.gate, "relation": d.relation, "attached": d.attached if self.use_prompts else None,
                "retrieved": d.attached,
                "prompt_norms": [] if vectors is None else vectors.norm(dim=-1).tolist(),
                "llm_input": shown[:len(bos)] + marks + shown[len(bos):],
                "input_rows": len(self.tokenizer(text, add_special_tokens=add_special(self.tokenizer, text))["input_ids"])
                + (0 if prefix is None else len(prefix))}


def labelled_queries(cases) -> list[tuple[str, str, str | None]]:
    """(kind, prompt, the case_id it should retrieve or None) for the stored `cases`: each edit
    prompt and first rephrasing (own case), each locality prompt (none, unless it is itself the
    prompt or a rephrasing of a stored case, as the teaching set's "other landmark" prompts can be)."""
    owner = {q: c.case_id for c in cases for q in (*c.rephrase_prompts[:1], c.prompt)}
    return ([("edit prompt", c.prompt, c.case_id) for c in cases]
            + [("rephrasing", c.rephrase_prompts[0], c.case_id) for c in cases if c.rephrase_prompts]
            + [("locality", q, owner.get(q)) for c in cases for q, _ in c.locality[:1]])


def gate_sweep(editor: Editor, queries: list[tuple[str, str, str | None]], thresholds: list[float] | None = None,
               n: int = 60) -> dict:
    """How often the sentinel, and each fixed threshold, decides right on labelled queries.
    editor: any editor whose `retrieve` returns Decisions (RECIPE, SERAC with its classifier).

    queries: (kind, prompt, the case_id it should retrieve, or None for "attach nothing"). Right
    means: that case's prompt is attached, or nothing is. The scores are the editor's own.
    thresholds: default n values spanning the queries' best scores. "best" is the threshold whose
    worst kind is decided right most often. "errors" splits the sentinel's wrong decisions per kind:
    another knowledge's prompt attached ("other"; "same answer" of those: a stored edit with the
    same new answer, as KnowEdit's ZsRE holds several edits of one question), or none where one was
    due ("none"). "answer": the share of the editor's decisions that attach the own prompt or one
    with the same new answer, or rightly none.
    """
    decisions = editor.retrieve([q for _, q, _ in queries])
    if thresholds is None:
        tops = [d.top[0].score for d in decisions if d.top] or [0.0]
        lo, hi = min(tops), max(tops)
        thresholds = [round(lo + (hi - lo) * i / (n - 1), 3) for i in range(n)]
    kinds = list(dict.fromkeys(k for k, _, _ in queries))

    def right(d: Decision, own: str | None, gate: float) -> bool:
        hit = d.top[0] if d.top and d.top[0].score > gate else None
        return (hit is None) if own is None else (hit is not None and hit.id == own)

    def share(kind: str, gate_of) -> float:
        rows = [(d, own) for (k, _, own), d in zip(queries, decisions) if k == kind]
        return sum(right(d, own, gate_of(d)) for d, own in rows) / len(rows)

    def decided(kind: str) -> float:  # the sentinel's, or the relation check's where it decided
        rows = [(d, own) for (k, _, own), d in zip(queries, decisions) if k == kind]
        return sum(right(d, own, d.sentinel) if d.relation is None else d.attached == own
                   for d, own in rows) / len(rows)

    fixed = {k: [share(k, lambda d, t=t: t) for t in thresholds] for k in kinds}
    best = max(range(len(thresholds)), key=lambda i: min(fixed[k][i] for k in kinds))
    def answer(case_id: str) -> str:
        return editor.cases[case_id].target_new.strip().lower()

    errors = {k: {"other": 0, "same answer": 0, "none": 0} for k in kinds}
    answered = {k: 0 for k in kinds}
    for (k, _, own), d in zip(queries, decisions):
        same = bool(d.attached and own and answer(d.attached) == answer(own))
        answered[k] += d.attached == own or same
        if d.attached != own:
            errors[k]["none" if d.attached is None else "other"] += 1
            errors[k]["same answer"] += same
    count = {k: sum(k == kind for kind, _, _ in queries) for k in kinds}
    return {"kinds": kinds, "stored": len(editor.memory), "thresholds": list(thresholds),
            "sentinel": {k: decided(k) for k in kinds}, "errors": errors, "fixed": fixed,
            "answer": {k: answered[k] / count[k] for k in kinds},
            "best": {"threshold": thresholds[best], **{k: fixed[k][best] for k in kinds}}}
