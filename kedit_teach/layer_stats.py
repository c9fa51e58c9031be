"""Layer statistics: the uncentred second moment C = E[k k^T] of an MLP down-projection's input.

A key k is what the down-projection reads at one token: act(gate(x)) * up(x) in the gated MLPs of
Gemma, Llama and Qwen (d_k = intermediate_size: 2048 for Gemma-3-270M). ROME's update divides by
C (Meng et al. 2022, Eq. 2), MEMIT's by lambda C + K K^T, and AlphaEdit projects onto the null space
of K_0 K_0^T: the same matrix, up to the number of keys it was summed over.

Which text the keys come from (`corpus`):
- "model" (the default, offline): text the model itself writes, sampled (seeded) from the bundled
  free-text openers. The reference code uses 100,000 Wikipedia texts, which takes days for a 7B
  model; Efficient Knowledge Editing via Minimal Precomputation (ACL 2025) finds that a few times
  d_k keys suffice, so the default stops at 4 x d_k keys. Text from the model's own distribution is
  what its MLP sees in use, needs no download, and is sampled once per model (then cached as JSON,
  so another layer costs one forward pass). Gemma-3-270M's sample (72 texts of 128 tokens, about
  2 min on 2 CPU cores) ships in assets/stats/, so its C costs one pass per layer (~9 s) from the start.
- "names" (offline): the same, sampled from openers written for the course that name people, places
  and companies (assets/stats/name_openers.txt, none of them a CounterFact subject); its sample for
  Gemma-3-270M ships too.
- "wikibio": the 306 KnowEdit WikiBio passages (Wikipedia-style biographies, ~20k tokens), from
  ../shared or downloaded: a larger, human-topic sample to measure the default against.
- "wikitext": WikiText-103 through the `datasets` package (online), as the reference does.
- or a list of strings.
The text matters more than the number of keys. ROME on 100 CounterFact edits, each alone
(`benchmarks/bench_locate.py stats`), keeps the neighbourhood prompts' answers 0.87 of the time
with "model", 0.85 with 3.6 times its keys, 0.93 with "names" and 0.95 with "wikibio".
C is accumulated in float64 (summing 10^4 outer products in fp32 loses the small directions that
C^-1 amplifies) and cached as safetensors per model, corpus, key count and layer; so is AlphaEdit's
projector onto C's null space (`null_space`).

What it does not do: edit (see editors/rome.py); it changes no weight.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .data import ASSETS
from .errors import UsageError
from .models import cache_dir, decoder_of, model_folder

CORPORA = ("model", "names", "wikibio", "wikitext")
KEYS_PER_DIM = 4  # default number of keys: 4 x d_k
MAX_TOKENS = 128  # tokens per text
STATS_ASSETS = ASSETS / "stats"
NAME_OPENERS = STATS_ASSETS / "name_openers.txt"  # written for the course; none names a CounterFact subject


class StatsError(UsageError, ValueError):
    """Statistics that can't be computed or loaded; the message names the fix."""


@dataclass
class LayerStats:
    layer: int
    C: torch.Tensor  # [d_k, d_k] float64, E[k k^T]
    n_keys: int
    corpus: str


def down_proj(model, layer: int) -> torch.nn.Linear:
    """The edited module: layer `layer`'s MLP down-projection (its input is the key)."""
    layers = decoder_of(model).layers
    if not 0 <= layer < len(layers):
        raise StatsError(f"layer {layer} is out of range: this model has layers 0..{len(layers) - 1}")
    return layers[layer].mlp.down_proj


def openers(corpus: str) -> tuple[list[str], str, int]:
    """The openers a model-text corpus samples from, where they are, and the batch size its shipped
    sample was drawn with (another batch size draws other texts from the same seed)."""
    if corpus == "names":
        return [line.strip() for line in NAME_OPENERS.read_text().splitlines() if line.strip()], \
            "assets/stats/name_openers.txt", 12
    rows = (ASSETS / "free_text.jsonl").read_text().splitlines()
    return [json.loads(line)["query"] for line in rows if line.strip()], "assets/free_text.jsonl", 16


@torch.random.fork_rng()  # seeded sampling, without moving the caller's random state
def model_texts(model, tokenizer, n: int, corpus: str = "model", length: int = MAX_TOKENS, seed: int = 0) -> list[str]:
    """n texts the model writes itself: sampled (temperature 1, top-k 50) from the corpus's openers
    in turn, `length` tokens each."""
    starts, _, batch_size = openers(corpus)
    starts = [starts[i % len(starts)] for i in range(n)]
    torch.manual_seed(seed)
    texts = []
    for i in tqdm(range(0, n, batch_size), desc="sampling text from the model (once)", leave=False):
        enc = tokenizer(starts[i:i + batch_size], return_tensors="pt", padding=True, padding_side="left").to(model.device)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, top_k=50, temperature=1.0, max_new_tokens=length,
                                 pad_token_id=tokenizer.pad_token_id)
        texts += tokenizer.batch_decode(out, skip_special_tokens=True)
    return texts


def corpus_texts(corpus: str | list[str], model=None, tokenizer=None, n_texts: int = 64) -> list[str]:
    if not isinstance(corpus, str):
        texts = [t for t in corpus if isinstance(t, str) and t.strip()]
        if not texts:
            raise StatsError("the corpus is empty: pass some non-empty texts, or corpus='model'")
        return texts
    if corpus in ("model", "names"):
        name = f"{corpus}-texts-{n_texts}.json"
        # The default CPU model's samples ship with the package (40 KB each): ~2 min less on a first run.
        shipped = STATS_ASSETS / _stats_dir(model).name / name
        path = shipped if shipped.exists() else _stats_dir(model) / name
        if path.exists():
            try:
                return json.loads(path.read_text())["texts"]
            except (ValueError, KeyError) as error:
                raise StatsError(f"{path} is unreadable ({error}); delete it and run again") from error
        texts = model_texts(model, tokenizer, n_texts, corpus)
        _, where, batch_size = openers(corpus)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"sampled": f"temperature 1, top-k 50, seed 0, batches of {batch_size}, from {where}",
                                    "texts": texts}, ensure_ascii=False))
        return texts
    if corpus == "wikibio":
        from .data import local_or_fetch
        records = json.loads(local_or_fetch("knowedit/wikibio-test-all.json", "knowedit-wikibio").read_text())
        return [r["text"] + " " + r["labels"] for r in records]
    if corpus == "wikitext":
        try:
            import datasets
        except ImportError as error:
            raise StatsError("corpus='wikitext' needs the `datasets` package and internet: pip install datasets "
                             "(offline, use corpus='model')") from error
        try:
            rows = datasets.load_dataset("wikitext", "wikitext-103-raw-v1", split="train")
        except Exception as error:  # offline, or the hub refused: datasets raises many kinds
            raise StatsError(f"corpus='wikitext' could not be loaded ({type(error).__name__}: {error}); it needs "
                             "internet once, then the datasets cache; offline, use corpus='model'") from error
        return [t for t in rows["text"][:20000] if len(t.split()) > 30]
    raise StatsError(f"corpus={corpus!r} is unknown; use one of {CORPORA} or a list of texts")


def _stats_dir(model) -> Path:
    return cache_dir() / "stats" / model_folder(str(getattr(model, "kedit_name", None) or model.config.name_or_path or "model"))


def _corpus_id(corpus: str | list[str]) -> str:
    return corpus if isinstance(corpus, str) else "texts-" + hashlib.sha256("\n".join(corpus).encode()).hexdigest()[:12]


def _cache_file(model, corpus: str | list[str], n_keys: int | None, layer: int) -> Path:
    """Where C of `layer` is cached; n_keys None is the default, 4 x d_k."""
    n_keys = n_keys or KEYS_PER_DIM * down_proj(model, layer).in_features
    return _stats_dir(model) / f"{_corpus_id(corpus)}-{n_keys}" / f"layer{layer}.safetensors"


def second_moments(model, tokenizer, layers: list[int], corpus: str | list[str] = "model",
                   n_keys: int | None = None, cache: bool = True, progress: bool = True) -> dict[int, LayerStats]:
    """C for each layer from at least n_keys keys (default 4 x d_k), in one pass over the corpus: texts
    are read in batches of 8 until n_keys keys are in, and every key of the last batch counts."""
    modules = {l: down_proj(model, l) for l in layers}
    d_k = next(iter(modules.values())).in_features
    n_keys = n_keys or KEYS_PER_DIM * d_k
    files = {l: _cache_file(model, corpus, n_keys, l) for l in layers}
    corpus_id = _corpus_id(corpus)
    out = {}
    for l, f in files.items():
        if cache and f.exists():
            try:
                saved = load_file(f)
            except Exception as error:  # a truncated or foreign file: say where it is, keep nothing half-read
                raise StatsError(f"the statistics cache {f} is unreadable ({error}); delete it and run again") from error
            out[l] = LayerStats(l, saved["C"], int(saved["n_keys"]), corpus_id)
    todo = [l for l in layers if l not in out]
    if not todo:
        return out
    texts = corpus_texts(corpus, model, tokenizer, n_texts=-(-n_keys // MAX_TOKENS) + 8)
    sums = {l: torch.zeros(d_k, d_k, dtype=torch.float64) for l in todo}
    count, mask_now = 0, {}

    def hook(l):
        def pre(m, args):
            k = args[0][mask_now["mask"]].to(torch.float64).cpu()  # real tokens only, not padding
            sums[l].addmm_(k.T, k)
        return pre

    handles = [modules[l].register_forward_pre_hook(hook(l)) for l in todo]
    bar = tqdm(total=n_keys, desc=f"layer statistics (layers {todo})", disable=not progress, leave=False)
    try:
        with torch.no_grad():
            for i in range(0, len(texts), 8):
                if count >= n_keys:
                    break
                enc = tokenizer(texts[i:i + 8], return_tensors="pt", padding=True, truncation=True,
                                max_length=MAX_TOKENS).to(model.device)
                mask_now["mask"] = enc["attention_mask"].bool()
                decoder_of(model)(**enc, use_cache=False)
                added = int(mask_now["mask"].sum())
                count += added
                bar.update(min(count, n_keys) - bar.n)  # the last batch's extra keys count, but the bar stops at its total
    finally:
        for h in handles:
            h.remove()
        bar.close()
    if count < d_k:
        raise StatsError(f"the corpus gave {count} keys, fewer than d_k = {d_k}, so C would be singular; "
                         "pass more text (or corpus='model')")
    for l in todo:
        out[l] = LayerStats(l, sums[l] / count, count, corpus_id)
        if cache:
            files[l].parent.mkdir(parents=True, exist_ok=True)
            save_file({"C": out[l].C, "n_keys": torch.tensor(count)}, str(files[l]))
    return out


def regularized(C: torch.Tensor, ridge: float) -> torch.Tensor:
    """C + ridge x mean(diag C) x I. A few thousand keys leave some directions of C almost empty,
    and C^-1 k would blow up along them; the ridge bounds that at 1/ridge times the mean scale."""
    return C + ridge * C.diagonal().mean() * torch.eye(len(C), dtype=C.dtype)


def second_moment(model, tokenizer, layer: int, **kw) -> LayerStats:
    return second_moments(model, tokenizer, [layer], **kw)[layer]


def null_space(model, tokenizer, layer: int, threshold: float, corpus: str | list[str] = "model",
               n_keys: int | None = None, cache: bool = True, progress: bool = True) -> tuple[torch.Tensor, float]:
    """AlphaEdit's projector P = U U^T onto the eigenvectors of C = K_0 K_0^T / n whose eigenvalues are
    below `threshold` (the directions the preserved keys hardly use), and the share of directions kept.
    float64 [d_k, d_k], stored as float32 next to C (the fresh result goes through float32 too, so a
    cached projector and a fresh one are the same)."""
    stats = second_moment(model, tokenizer, layer, corpus=corpus, n_keys=n_keys, cache=cache, progress=progress)
    f = _cache_file(model, corpus, n_keys, layer)
    f = f.with_name(f"null-{threshold:g}-{f.name}")
    if cache and f.exists():
        try:
            P = load_file(f)["P"]
        except Exception as error:
            raise StatsError(f"the projector cache {f} is unreadable ({error}); delete it and run again") from error
    else:  # one eigendecomposition, seconds on a CPU with nothing to count inside it: a status line
        with tqdm(total=1, desc=f"null-space projector of layer {layer} (once, then cached)", disable=not progress,
                  leave=False) as bar:
            values, vectors = torch.linalg.eigh(stats.C)
            bar.update()
        U = vectors[:, values < threshold]
        P = (U @ U.T).float()
        if cache:
            f.parent.mkdir(parents=True, exist_ok=True)
            save_file({"P": P}, str(f))
    P = P.double()
    return P, float(torch.trace(P)) / len(P)
