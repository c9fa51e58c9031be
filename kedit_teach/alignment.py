"""LTE's alignment phase (Jiang et al., 2024, Sec. 3.1): the training data and the LoRA fine-tune.

Every example is one knowledge-editing prompt, "[Updated Information] {facts}\n[Query] {query}",
formatted by the same `format_prompt` + `update_prompt` the LTE editor uses at inference, and an
answer whose tokens carry the loss (the prompt carries none). Three kinds:

- in_scope:     the query is the edit prompt, a rephrasing or a multi-hop (portability) question;
                the answer is the new target, ended with "." so generation stops after it.
- out_of_scope: the query is a locality prompt (another subject with the same relation, or the same
                subject with another relation); the facts are still the edit's. The targets are the
                base model's *own* behaviour without any facts (self-distillation), because
                locality means "answer as before", and a 270M model doesn't know most gold answers.
                Half the examples take the base model's argmax at each gold-answer token (what the
                teacher-forced locality metric compares), half its greedy continuation (what the
                generation metric compares: without these, the model learns to stop after a short
                answer, as in-scope examples do, and every longer continuation changes).
- free_text:    general prompts written for this project (`assets/free_text.jsonl`) under a few
                unrelated facts, also distilled from the base model: retrieval always prepends k
                facts at inference, so ignoring irrelevant ones is a skill to keep.

The facts follow the threefold strategy: 50% the exact descriptor alone, 25% with its top-1 most
similar *other* descriptor, 25% with the top-2 (similarity by the retrieval encoder). The order of
the facts is shuffled, unlike the reference code which always puts the true one first.

Training and evaluation subjects are kept disjoint (`held_out`). What it does not do: retrieval at
inference, or any prompt building of its own (see editors/lte.py and models.update_prompt).
"""
from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from tqdm.auto import tqdm

from .data import (ASSETS, SHARED_DIR, BenchmarkUnavailable, EditCase, disjoint_subjects, dropping_quietly, load_cases,
                   load_counterfact, load_knowedit, load_teach, local_or_fetch)
from .errors import UsageError
from .memory import build_memory
from .metrics import generate_greedy, nll, pack_targets, target_budget, target_logits, teacher_forced
from .models import cache_dir, cpu_autocast, format_prompt, model_folder, update_prompt

FREE_TEXT_PATH = ASSETS / "free_text.jsonl"
SHIPPED_ADAPTERS = ASSETS / "lte"
ADAPTER_FILE, RECORD_FILE = "adapter.safetensors", "record.json"
KINDS = ("in_scope", "out_of_scope", "free_text")
THREEFOLD = ((0.50, 0), (0.25, 1), (0.25, 2))  # (share of examples, number of similar distractors)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class AdapterError(UsageError, ValueError):
    """A saved adapter that can't be used; the message names the file, the field and the fix."""


@dataclass
class AlignmentExample:
    kind: str
    facts: list[str]
    query: str
    answer: str
    case_id: str
    distractors: int = 0
    labels: list[int] | None = None  # distilled kinds: the base model's own argmax per answer token
    teacher: str = "answer"  # what the loss follows: "answer", "base argmax", "base continuation"

    def prompt(self, tokenizer) -> str:
        return format_prompt(tokenizer, update_prompt(self.facts, self.query))


@dataclass
class AlignmentConfig:
    """What the data contains. The flags off give the paper's ablation rows (Table 4)."""
    threefold: bool = True
    in_scope: bool = True
    out_of_scope: bool = True
    free_text: bool = True
    free_fraction: float = 0.1  # share of free-text examples in the final mix
    seed: int = 0

    def __post_init__(self):
        if not (self.in_scope or self.out_of_scope or self.free_text):
            raise ValueError("AlignmentConfig turns off every kind of example; keep at least one of "
                             "in_scope, out_of_scope, free_text")
        if not 0 <= self.free_fraction < 1:
            raise ValueError(f"free_fraction={self.free_fraction}: use a share in [0, 1)")


def load_free_text(path: str | Path = FREE_TEXT_PATH) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [(r["query"], r["answer"]) for r in rows]


def similar_descriptors(cases: list[EditCase], encoder=None, n: int = 2) -> dict[str, list[str]]:
    """case_id -> the retriever's ranking of the other cases' descriptors (top n + a few spare)."""
    texts = [c.descriptor for c in cases]
    memory = build_memory(texts, [c.case_id for c in cases], encoder, desc="encoding descriptors")
    return {c.case_id: [h.text for h in hits if h.id != c.case_id]
            for c, hits in zip(cases, memory.search(texts, k=n + 4))}


def threefold_facts(descriptor: str, retrieved: list[str], u: float) -> list[str]:
    """Sec. 3.1's threefold strategy for one example, given a uniform draw u in [0, 1).

    u < 0.5: the exact descriptor alone; u < 0.75: plus the top-1 similar descriptor; otherwise
    plus the top-2. `retrieved` is a retriever's ranking, which may contain the descriptor itself
    (a memory returns a text as its own nearest neighbour): that one never counts as "similar".
    The true fact comes first here; the caller shuffles.
    """
    others = [t for t in dict.fromkeys(retrieved) if t != descriptor]
    acc, n = 0.0, 0
    for share, n in THREEFOLD:
        acc += share
        if u < acc:
            break
    return [descriptor, *others[:n]]


def build_examples(cases: list[EditCase], held_out: list[EditCase] = (), config: AlignmentConfig | None = None,
                   encoder=None) -> list[AlignmentExample]:
    """Alignment examples from training cases whose subjects never occur in held_out."""
    cfg = config or AlignmentConfig()
    rng = random.Random(cfg.seed)
    cases = disjoint_subjects(cases, held_out)
    if not cases:
        raise ValueError("no training case is left after removing the held-out subjects; "
                         "pass training cases about other subjects")
    neighbours = similar_descriptors(cases, encoder) if cfg.threefold else {}

    def facts_for(case: EditCase) -> tuple[list[str], int]:
        facts = threefold_facts(case.descriptor, neighbours[case.case_id], rng.random()) \
            if cfg.threefold else [case.descriptor]
        rng.shuffle(facts)  # the true fact must not always come first
        return facts, len(facts) - 1

    out = []
    for c in cases:
        queries = []
        if cfg.in_scope:
            queries += [("in_scope", q, c.target_new + ".") for q in (c.prompt, *c.rephrase_prompts)]
            queries += [("in_scope", q, a + ".") for q, a in c.portability]
        if cfg.out_of_scope:
            queries += [("out_of_scope", q, a) for q, a in c.locality]
        for kind, q, a in queries:
            facts, n = facts_for(c)
            out.append(AlignmentExample(kind, facts, q, a, c.case_id, n))
    if cfg.free_text:
        free = load_free_text()
        n_free = round(len(out) * cfg.free_fraction / (1 - cfg.free_fraction)) if out else len(free)
        descriptors = [c.descriptor for c in cases]
        for i in range(n_free):
            q, a = free[i % len(free)]
            facts = rng.sample(descriptors, min(len(descriptors), rng.randint(1, 3)))
            out.append(AlignmentExample("free_text", facts, q, a, f"free-{i % len(free)}", len(facts) - 1))
    rng.shuffle(out)
    return out


def mix(examples: list[AlignmentExample]) -> dict:
    """The data mix: counts and shares per kind and per number of distractors."""
    n = len(examples)
    kinds = Counter(e.kind for e in examples)
    folds = Counter(e.distractors for e in examples if e.kind != "free_text")
    m = sum(folds.values())
    return {"examples": n, "cases": len({e.case_id for e in examples if e.kind != "free_text"}),
            "kinds": {k: kinds.get(k, 0) for k in KINDS},
            "kind_share": {k: round(kinds.get(k, 0) / n, 3) if n else 0.0 for k in KINDS},
            "teachers": dict(Counter(e.teacher for e in examples)),
            "distractors": {str(k): folds[k] for k in sorted(folds)},
            "distractor_share": {str(k): round(folds[k] / m, 3) for k in sorted(folds)} if m else {}}


@torch.no_grad()
def distill(model, tokenizer, examples: list[AlignmentExample], batch_size: int = 32, seed: int = 0) -> None:
    """Set the targets of out-of-scope and free-text examples from the model, given the query alone
    (no facts): what "unchanged" means for the locality metrics. Alternate examples get the argmax
    at each gold-answer token or the greedy continuation (len(answer tokens) + 5 tokens, the budget
    of the generation protocol)."""
    todo = [e for e in examples if e.kind != "in_scope" and e.teacher == "answer"]
    if not todo:
        return
    order = list(range(len(todo)))
    random.Random(seed).shuffle(order)
    by_argmax, by_greedy = [todo[i] for i in order[::2]], [todo[i] for i in order[1::2]]
    texts = [format_prompt(tokenizer, e.query) for e in by_greedy]
    continuations = generate_greedy(model, tokenizer, texts, target_budget(tokenizer, texts, [e.answer for e in by_greedy]),
                                    batch_size=batch_size, desc="distilling continuations")
    for e, said in zip(by_greedy, continuations):
        if said.strip():
            e.answer, e.teacher = said.strip(), "base continuation"
        else:  # the model said nothing; its argmax on the answer still says something
            by_argmax.append(e)
    scores = teacher_forced(model, tokenizer, [format_prompt(tokenizer, e.query) for e in by_argmax],
                            [e.answer for e in by_argmax], batch_size=batch_size, desc="distilling labels")
    for e, s in zip(by_argmax, scores):
        e.labels, e.teacher = s.pred_ids, "base argmax"


def batch_loss(model, tokenizer, examples: list[AlignmentExample]) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens only; distilled examples use their labels."""
    batch = pack_targets(tokenizer, [e.prompt(tokenizer) for e in examples], [e.answer for e in examples])
    gold = []
    for e, ids in zip(examples, batch.target_ids):
        # the same answer can tokenise differently after the facts; then fall back to its own tokens
        gold += e.labels if e.labels is not None and len(e.labels) == len(ids) else ids
    return nll(target_logits(model, batch), torch.tensor(gold))


# ----------------------------------------------------------------------------- LoRA


@dataclass
class TrainConfig:
    """CPU defaults: the 270M model in fp32 with bf16 autocast (measured 1.7 s/step at batch 8 on
    2 cores, against 4-5 s in plain fp32). GPU (7B in 4-bit): the same, QLoRA through peft."""
    steps: int = 400
    batch_size: int = 8
    lr: float = 4e-4
    rank: int = 16
    alpha: int = 32
    warmup: int = 20
    seed: int = 0
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))


def add_lora(model, cfg: TrainConfig):
    """Wrap the model with a fresh peft LoRA (QLoRA when the model is 4-bit). Adapters start off."""
    from peft import LoraConfig, get_peft_model
    present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in cfg.targets if t in present]
    if not targets:
        raise ValueError(f"none of the LoRA targets {cfg.targets} is a module of this model")
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=targets)
    torch.manual_seed(cfg.seed)
    return get_peft_model(model, lora)


def shuffled_batches(n: int, size: int, rng: random.Random) -> Iterator[list[int]]:
    """Endless batches of `size` indices into n examples; reshuffled whenever fewer than `size` remain."""
    order, pos = list(range(n)), n
    while True:
        if pos + size > n:
            rng.shuffle(order)
            pos = 0
        yield order[pos:pos + size]
        pos += size


def train_lora(peft_model, tokenizer, examples: list[AlignmentExample], cfg: TrainConfig | None = None,
               progress: bool = True) -> list[float]:
    """Fine-tune the LoRA weights on the examples; returns the loss per step."""
    cfg = cfg or TrainConfig()
    if not examples:
        raise ValueError("no alignment examples to train on; build them with build_examples(cases)")
    with peft_model.disable_adapter():  # the targets are the base model's own answers
        distill(peft_model, tokenizer, examples, seed=cfg.seed)
    params = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then linear decay to zero
        opt, lambda s: min((s + 1) / max(cfg.warmup, 1), max(cfg.steps - s, 0) / max(cfg.steps - cfg.warmup, 1)))
    batches = shuffled_batches(len(examples), cfg.batch_size, random.Random(cfg.seed))
    losses = []
    peft_model.train()
    bar = tqdm(range(cfg.steps), desc="LTE alignment", disable=not progress)
    try:
        for _ in bar:
            chunk = [examples[i] for i in next(batches)]
            with cpu_autocast(peft_model):
                loss = batch_loss(peft_model, tokenizer, chunk)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    finally:
        peft_model.eval()
        for p in params:
            p.requires_grad_(False)
    return losses


# ----------------------------------------------------------------------------- saved adapters


def is_adapter(path: str | Path) -> bool:
    """Whether a folder holds saved LoRA weights (`read_record` then checks the rest)."""
    return (Path(path) / ADAPTER_FILE).exists()


def trained_adapter(model_name: str) -> Path:
    """Where `train lte` writes by default: the user's cache, never the installed package."""
    return cache_dir() / "lte" / model_folder(model_name)


def default_adapter(model_name: str) -> Path:
    """The adapter LTE(adapter="default") loads: one you trained, else the one shipped (CPU model)."""
    mine = trained_adapter(model_name)
    return mine if is_adapter(mine) else SHIPPED_ADAPTERS / model_folder(model_name)


def save_adapter(peft_model, path: str | Path, record: dict) -> Path:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous().cpu() for k, v in get_peft_model_state_dict(peft_model).items()}
    save_file(state, str(path / ADAPTER_FILE))
    (path / RECORD_FILE).write_text(json.dumps(record, indent=1))
    return path


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """A hash of trained weights: stored edits made with other weights are refused."""
    import hashlib
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()[:16]


def check_run(examples: int, batch: int, start: int = 0, steps: int | None = None) -> None:
    """Refuse a training run that can't fill one batch, or a resumed one with nothing left to do."""
    if examples < batch:
        raise ValueError(f"{examples} training examples, fewer than one batch ({batch}); "
                         "pass more examples or a smaller batch")
    if steps is not None and start >= steps:
        raise ValueError(f"start={start} leaves nothing to do: the run has {steps} steps")


def run_record(settings: dict, data: dict, curves: dict[str, list[float]], seconds: float, first: str = "loss") -> dict:
    """What a training run writes beside its weights (RECIPE, SERAC, MEND): its settings, its data,
    the time, and every loss at every step (4 significant digits)."""
    return {**settings, "data": data, "seconds": round(seconds, 1), "steps": len(curves[first]),
            "loss": {k: [float(f"{x:.4g}") for x in v] for k, v in curves.items() if v},
            "trained_at": time.strftime("%Y-%m-%d %H:%M:%S")}


def yours_or_shipped(yours: Path, shipped: Path, weights: str) -> Path:
    """The folder a trained part loads by default: the one you trained (in the cache), else the one
    the package ships."""
    return yours if (yours / weights).exists() else shipped


def save_trained(trained, path: str | Path, weights: str, record: dict) -> Path:
    """`trained.trained_state()` as safetensors and the record as JSON (RECIPE's modules, SERAC's
    classifier). The fingerprint is taken here, from the weights written, whatever record is passed."""
    from safetensors.torch import save_file
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = trained.trained_state()
    save_file(state, str(path / weights))
    (path / RECORD_FILE).write_text(json.dumps({**record, "fingerprint": fingerprint(state)}, indent=1))
    return path


def load_trained_state(trained, path: str | Path, weights: str, field: str, error: type[Exception], again: str) -> None:
    """Load saved weights into `trained` (strict about names and shapes); a corrupt file or one
    from another run than its record raises `error`, naming the file and the fix."""
    from safetensors.torch import load_file
    file = Path(path) / weights
    try:
        state = load_file(str(file))
    except Exception as e:  # safetensors raises its own types for a corrupt header
        raise error(f"{file} is corrupt ({e}); train {again} again") from e
    expected = trained.trained_state()
    bad = sorted(set(expected) ^ set(state)) or [k for k in expected if state[k].shape != expected[k].shape]
    if bad:
        raise error(f"{file} does not match field '{field}' of {RECORD_FILE} (first mismatch: {bad[0]}); "
                    "the two files come from different runs, train again")
    trained.load_state_dict(state, strict=False)


def read_trained_record(path: str | Path, weights: str, field: str, schema: type, error: type[Exception],
                        missing_fix: str, needs: str, again: str) -> dict:
    """The JSON record beside saved trained weights (LTE's adapter, RECIPE's modules), refused with
    `error` if either file is missing or record[field] doesn't fit `schema`."""
    path = Path(path)
    for f in (path / weights, path / RECORD_FILE):
        if not f.exists():
            raise error(f"{f} is missing: {missing_fix}")
    try:
        record = json.loads((path / RECORD_FILE).read_text())
        schema(**record[field])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise error(f"{path / RECORD_FILE} is malformed ({e!r}); it needs a field '{field}' with "
                    f"{needs}; train {again} again") from e
    return record


def read_record(path: str | Path) -> dict:
    return read_trained_record(
        path, ADAPTER_FILE, "train", TrainConfig, AdapterError,
        "pass a folder written by `python -m kedit_teach train lte` (or LTE.train_alignment), or use "
        "adapter=None for unaligned LTE", "the LoRA settings", "the adapter")


def load_adapter(model, path: str | Path):
    """The model wrapped with the saved LoRA weights (adapters off until the editor turns them on)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    path = Path(path)
    record = read_record(path)
    try:
        state = load_file(str(path / ADAPTER_FILE))
    except Exception as e:  # safetensors raises its own types for a corrupt header
        raise AdapterError(f"{path / ADAPTER_FILE} is corrupt ({e}); train the adapter again") from e
    trained_on = record.get("model_type")
    if trained_on != model.config.model_type:
        raise AdapterError(f"{path / RECORD_FILE}: field 'model_type' is {trained_on!r} (model "
                           f"{record.get('model')!r}), but this model is a {model.config.model_type!r}; "
                           "load the model it was trained for, or train a new adapter")
    peft_model = add_lora(model, TrainConfig(**record["train"]))
    expected = {k for k in peft_model.state_dict() if "lora_" in k}
    try:
        result = set_peft_model_state_dict(peft_model, state)
    except RuntimeError as e:  # shape mismatch: trained for another model
        raise AdapterError(f"{path / ADAPTER_FILE} was trained for {record.get('model')!r} and does not fit "
                           f"this model ({str(e).splitlines()[0]}); use that model or train a new adapter") from e
    missing = [k for k in getattr(result, "missing_keys", []) if k in expected]
    if missing:
        raise AdapterError(f"{path / ADAPTER_FILE} lacks {len(missing)} LoRA tensors (e.g. {missing[0]}); "
                           f"it was trained for {record.get('model')!r}; train the adapter again")
    return peft_model, record


def make_record(model_name: str, model_type: str, examples, train_cfg: TrainConfig, data_cfg: AlignmentConfig,
                losses: list[float], seconds: float, sources: list[str]) -> dict:
    return {"model": model_name, "model_type": model_type, "data": asdict(data_cfg), "train": asdict(train_cfg),
            "mix": mix(examples), "sources": sources, "seconds": round(seconds, 1),
            "steps": len(losses), "loss": [round(x, 4) for x in losses],
            "trained_at": time.strftime("%Y-%m-%d %H:%M:%S")}


def example_table(examples: list[AlignmentExample], tokenizer, n_per_kind: int = 2) -> list[dict]:
    """A few examples of each kind, as the model sees them, for the notebook."""
    rows, seen = [], Counter()
    for e in examples:
        if seen[e.kind] < n_per_kind:
            seen[e.kind] += 1
            rows.append({"kind": e.kind, "distractors": e.distractors, "prompt": e.prompt(tokenizer),
                         "answer": e.answer, "loss follows": e.teacher})
    return rows


def default_sources() -> list[str]:
    """Training data specs: CounterFact-train (local copy only) and KnowEdit's wiki_counterfact train
    split, which adds multi-hop in-scope and same-subject out-of-scope questions (downloadable)."""
    specs = []
    cf_train = SHARED_DIR / "counterfact" / "counterfact-train.json"
    if cf_train.exists():
        specs.append(f"counterfact:{cf_train}")
    specs.append(f"knowedit:{local_or_fetch('knowedit/train_cf.json', 'knowedit-wiki_counterfact-train')}")
    return specs


def available_training_cases(held_out: list[EditCase], n: int | None = None,
                             seed: int = 0) -> tuple[list[EditCase], list[str]]:
    """(cases, sources) for a demo: the default sources if they can be had, else, offline, the
    bundled teaching set's cases whose subjects are not held out. Says which it used."""
    try:
        specs = default_sources()
        return load_training_cases(specs, n, seed), specs
    except (BenchmarkUnavailable, FileNotFoundError) as e:
        print(f"no benchmark training split here ({type(e).__name__}); using the teaching set's "
              "cases about other subjects instead")
        return disjoint_subjects(load_teach(), held_out)[:n], ["teach (held-out subjects removed)"]


def default_held_out() -> list[EditCase]:
    """Every case the course evaluates on: their subjects never appear in training."""
    cases = load_teach()
    for rel, loader in (("counterfact/counterfact-edit.json", load_counterfact),
                        ("knowedit/ZsRE-test-all.json", load_knowedit)):
        if (SHARED_DIR / rel).exists():
            cases += loader(SHARED_DIR / rel)
    return cases


def load_training_cases(specs: list[str], n: int | None = None, seed: int = 0) -> list[EditCase]:
    """Training cases from data specs (see data.load_cases), shuffled and cut to n."""
    with dropping_quietly():
        cases = [c for spec in specs for c in load_cases(spec)]
    # case_ids repeat across files; prefix them with the source so ids stay unique
    for i, c in enumerate(cases):
        c.case_id = f"train{i}-{c.case_id}"
    random.Random(seed).shuffle(cases)
    return cases[:n]

