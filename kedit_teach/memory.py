"""A vector memory of edit descriptors on faiss: what LTE retrieves from, and RECIPE's key store.

    memory = VectorMemory(load_encoder())           # metric follows the encoder: cosine for MiniLM
    memory.add(["The Eiffel Tower is in Rome."], ids=["e1"])
    memory.search("Where is the Eiffel Tower?", k=3)  # -> [Hit(id, text, score), ...]

Texts are encoded in batches with a sentence-transformers encoder; `add_vectors`/`search_vectors`
take raw vectors instead (RECIPE's keys, which are not sentence embeddings). Two faiss indexes:

- "flat" (default): exact inner products (`IndexFlatIP`). Removal is exact and scores are the true
  cosine or dot product. A single query scans every vector on one core: 0.7 ms at 10k entries,
  13 ms at 100k on this project's 2-core CPU (`python -m benchmarks.bench_lte memory`).
- "hnsw": an approximate graph index (`IndexHNSWFlat`, M=32, efSearch=64) for large lifelong
  memories: 0.5 ms at 100k, with the exact top hit 95.5% of the time. It cannot delete, so a removed
  entry is skipped at search time and the index is rebuilt without the removed ones once they pile
  up (and before a save).
Encoding the query with MiniLM costs about 5 ms on that CPU whichever index is used.

The default encoder is the offline all-MiniLM-L6-v2 (cosine). The LTE paper retrieves with
multi-qa-mpnet-base-dot-v1, trained for dot products: online, use
`VectorMemory(load_encoder("sentence-transformers/multi-qa-mpnet-base-dot-v1"), metric="dot")`.

Ids are strings (an edit's case_id). The same text may be stored under two ids; adding an id that
is already present is an error, because silently replacing an edit is how evaluations go wrong.

What it does not do: decide what to store or how to use what it finds (see editors/lte.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .errors import UsageError

METRICS = ("cosine", "dot")
INDEXES = ("flat", "hnsw")
INDEX_FILE, META_FILE = "memory.faiss", "memory.json"


class MemoryStateError(UsageError, ValueError):
    """A saved memory that can't be loaded; the message names the file, the field and the fix."""


@dataclass(frozen=True)
class Hit:
    id: str
    text: str
    score: float


def encoder_metric(encoder) -> str:
    """The similarity an encoder was trained for: sentence-transformers records it on the model."""
    name = str(getattr(encoder, "similarity_fn_name", None) or "cosine").lower()
    return "dot" if name in ("dot", "dot_product") else "cosine"


class VectorMemory:
    def __init__(self, encoder=None, metric: str | None = None, dim: int | None = None,
                 batch_size: int = 64, index: str = "flat"):
        """encoder: a SentenceTransformer (or None for vectors only, then pass dim).
        metric: "cosine" (inner product of normalised vectors) or "dot"; default: the encoder's.
        index: "flat" (exact) or "hnsw" (approximate, for memories of 100k entries and more)."""
        if index not in INDEXES:
            raise ValueError(f"index={index!r} is unknown; use 'flat' (exact) or 'hnsw' (approximate, large memories)")
        if encoder is None and dim is None:
            raise ValueError("VectorMemory needs an encoder (e.g. models.load_encoder()) or, for raw "
                             "vectors, dim=<vector size>")
        metric = metric or (encoder_metric(encoder) if encoder is not None else "dot")
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r} is unknown; use 'cosine' (MiniLM and most "
                             f"sentence encoders) or 'dot' (dot-trained ones such as multi-qa-mpnet-base-dot-v1)")
        self.encoder, self.metric, self.batch_size, self.kind = encoder, metric, batch_size, index
        self.dim = dim or (getattr(encoder, "get_embedding_dimension", None)
                           or encoder.get_sentence_embedding_dimension)()
        self.index = self._new_index()
        self._next = 0                       # faiss int64 ids are never reused
        self._slot: dict[str, int] = {}      # id -> faiss id
        self._entry: dict[int, tuple[str, str]] = {}  # faiss id -> (id, text)
        self._removed: set[int] = set()      # hnsw only: faiss ids still in the graph, skipped

    def _new_index(self):
        import faiss
        if self.kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        graph = faiss.IndexHNSWFlat(self.dim, 32, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction, graph.hnsw.efSearch = 64, 64
        return faiss.IndexIDMap2(graph)

    def __len__(self) -> int:
        return len(self._slot)

    @property
    def ids(self) -> list[str]:
        return list(self._slot)

    # ------------------------------------------------------------------ vectors
    def encode(self, texts: list[str]) -> np.ndarray:
        if self.encoder is None:
            raise ValueError("this memory has no encoder, so it stores vectors only; use add_vectors / "
                             "search_vectors, or build it with VectorMemory(load_encoder())")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if bad:
            raise ValueError(f"text #{bad[0]} is empty or not a string ({texts[bad[0]]!r}); every "
                             "memory entry and query needs some text")
        vectors = self.encoder.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                      show_progress_bar=len(texts) > 4 * self.batch_size)
        return self._prepare(vectors)

    def _prepare(self, vectors) -> np.ndarray:
        import faiss
        v = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim))
        if self.metric == "cosine":
            faiss.normalize_L2(v)
        return v

    def vectors(self, ids: list[str]) -> np.ndarray:
        """The stored (prepared) vectors of these ids, [len(ids), dim]."""
        return np.stack([self.index.reconstruct(self._slot[i]) for i in ids]).reshape(-1, self.dim)

    # ------------------------------------------------------------------ add / remove
    def add(self, texts: str | list[str], ids: str | list[str] | None = None) -> list[str]:
        """Encode and store texts (one or a batch). ids default to the texts' positions."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = [ids] if isinstance(ids, str) else ids
        return self.add_vectors(self.encode(texts), texts, ids)

    def add_vectors(self, vectors, texts: list[str], ids: list[str] | None = None) -> list[str]:
        v = self._prepare(vectors)
        if ids is None:
            ids = [str(self._next + i) for i in range(len(texts))]
        if not (len(v) == len(texts) == len(ids)):
            raise ValueError(f"{len(v)} vectors, {len(texts)} texts and {len(ids)} ids: pass one of each per entry")
        clash = [i for i in ids if i in self._slot]
        if clash or len(set(ids)) != len(ids):
            raise ValueError(f"id {(clash or ids)[0]!r} is already in the memory (or given twice); "
                             "remove() it first or use another id")
        slots = np.arange(self._next, self._next + len(ids), dtype=np.int64)
        self.index.add_with_ids(v, slots)
        for slot, i, t in zip(slots.tolist(), ids, texts):
            self._slot[i], self._entry[slot] = slot, (i, t)
        self._next += len(ids)
        return list(ids)

    def remove(self, id: str) -> None:
        if id not in self._slot:
            raise KeyError(f"no memory entry with id {id!r} (the memory holds {len(self)} entries)")
        slot = self._slot.pop(id)
        del self._entry[slot]
        if self.kind == "flat":
            self.index.remove_ids(np.array([slot], dtype=np.int64))
            return
        self._removed.add(slot)
        if len(self._removed) > max(64, len(self) // 4):  # skipping costs search time: rebuild
            self._compact()

    def _compact(self) -> None:
        """Rebuild the hnsw graph from the live entries only."""
        slots = np.array(sorted(self._entry), dtype=np.int64)
        vectors = np.stack([self.index.reconstruct(int(s)) for s in slots]) if len(slots) else None
        self.index, self._removed = self._new_index(), set()
        if vectors is not None:
            self.index.add_with_ids(vectors, slots)

    def clear(self) -> None:
        self.index = self._new_index()
        self._removed.clear()
        self._slot.clear()
        self._entry.clear()

    # ------------------------------------------------------------------ search
    def search(self, queries: str | list[str], k: int = 3) -> list[Hit] | list[list[Hit]]:
        """Top-k entries per query, best first. A str query gives one list, a list gives lists."""
        single = isinstance(queries, str)
        hits = self.search_vectors(self.encode([queries] if single else list(queries)), k)
        return hits[0] if single else hits

    def search_vectors(self, vectors, k: int = 3) -> list[list[Hit]]:
        if k < 1:
            raise ValueError(f"k={k}: ask for at least one neighbour")
        v = self._prepare(vectors)
        if not len(self):
            return [[] for _ in range(len(v))]
        scores, slots = self.index.search(v, min(k + len(self._removed), self.index.ntotal))
        return [[Hit(*self._entry[s], float(x)) for s, x in zip(row_s, row_x)
                 if s >= 0 and s not in self._removed][:k]
                for row_s, row_x in zip(slots.tolist(), scores.tolist())]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        import faiss
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self._removed:
            self._compact()  # the file holds live entries only
        faiss.write_index(self.index, str(path / INDEX_FILE))
        meta = {"metric": self.metric, "dim": self.dim, "index": self.kind, "next": self._next,
                "entries": [[slot, i, t] for slot, (i, t) in self._entry.items()]}
        (path / META_FILE).write_text(json.dumps(meta, ensure_ascii=False))
        return path

    def load(self, path: str | Path) -> "VectorMemory":
        """Replace this memory's contents with a saved one (same metric and dimension)."""
        import faiss
        path = Path(path)
        for f in (path / INDEX_FILE, path / META_FILE):
            if not f.exists():
                raise MemoryStateError(f"{f} is missing: pass the folder written by memory.save(path)")
        try:
            meta = json.loads((path / META_FILE).read_text())
            entries = {int(s): (str(i), str(t)) for s, i, t in meta["entries"]}
            dim, metric, nxt, kind = int(meta["dim"]), meta["metric"], int(meta["next"]), meta["index"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
            raise MemoryStateError(f"{path / META_FILE} is malformed ({e!r}); it needs fields metric, "
                                   "dim, index, next and entries [[slot, id, text], ...]; save the memory again") from e
        if (dim, metric, kind) != (self.dim, self.metric, self.kind):
            raise MemoryStateError(f"{path / META_FILE}: saved with metric={metric!r}, dim={dim}, index={kind!r}, "
                                   f"but this memory has metric={self.metric!r}, dim={self.dim}, index={self.kind!r}; "
                                   "build it with the same encoder and index")
        try:
            index = faiss.read_index(str(path / INDEX_FILE))
        except RuntimeError as e:
            raise MemoryStateError(f"{path / INDEX_FILE} is corrupt ({e}); save the memory again") from e
        if index.ntotal != len(entries) or index.d != dim:
            raise MemoryStateError(f"{path / INDEX_FILE} holds {index.ntotal} vectors of size {index.d}, but "
                                   f"{META_FILE} lists {len(entries)} of size {dim}; the two files come from "
                                   "different saves, save the memory again")
        self.index, self._next, self._entry, self._removed = index, nxt, entries, set()
        self._slot = {i: s for s, (i, _) in entries.items()}
        return self


def build_memory(texts: list[str], ids: list[str] | None = None, encoder=None, batch_size: int = 256,
                 desc: str = "encoding memory") -> VectorMemory:
    """A memory filled with many texts, encoded in chunks under one progress bar."""
    from .models import load_encoder
    memory = VectorMemory(encoder if encoder is not None else load_encoder())
    ids = ids if ids is not None else [str(i) for i in range(len(texts))]
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=len(texts) <= batch_size):
        memory.add(texts[start:start + batch_size], ids[start:start + batch_size])
    return memory
