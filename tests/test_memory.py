"""VectorMemory on a real faiss index and the real MiniLM encoder: add, search, remove, save/load."""
from __future__ import annotations

import json

import numpy as np
import pytest

from kedit_teach.memory import INDEX_FILE, META_FILE, MemoryStateError, VectorMemory, encoder_metric

FACTS = ["The Eiffel Tower is located in Rome.", "Danielle Darrieux speaks English.",
         "Toyota was founded in Germany.", "The Colosseum is in Paris."]


@pytest.fixture(params=["flat", "hnsw"])
def memory(encoder, request):
    m = VectorMemory(encoder, index=request.param)
    m.add(FACTS, ids=["e0", "e1", "e2", "e3"])
    return m


def test_metric_follows_the_encoder(encoder):
    assert encoder_metric(encoder) == "cosine"
    assert encoder_metric(type("Dot", (), {"similarity_fn_name": "dot"})()) == "dot"
    assert VectorMemory(encoder).metric == "cosine"
    with pytest.raises(ValueError, match="metric='l2' is unknown"):
        VectorMemory(encoder, metric="l2")


def test_search_finds_the_relevant_fact_with_cosine_scores(memory):
    hits = memory.search("Where is the Eiffel Tower?", k=2)
    assert [h.id for h in hits][0] == "e0" and len(hits) == 2
    assert hits[0].text == FACTS[0] and hits[0].score > hits[1].score
    (exact,) = memory.search(FACTS[2], k=1)
    assert exact.id == "e2" and exact.score == pytest.approx(1.0, abs=1e-5)
    batch = memory.search(["Toyota's founding country", "the Colosseum"], k=1)
    assert [b[0].id for b in batch] == ["e2", "e3"]


def test_single_and_batched_adds_agree(encoder):
    one, many = VectorMemory(encoder), VectorMemory(encoder)
    for i, f in enumerate(FACTS):
        one.add(f, ids=f"e{i}")
    many.add(FACTS, ids=[f"e{i}" for i in range(4)])
    q = "Who speaks English?"
    assert [(h.id, round(h.score, 5)) for h in one.search(q, 4)] == [(h.id, round(h.score, 5)) for h in many.search(q, 4)]


def test_dot_metric_scores_are_raw_dot_products():
    m = VectorMemory(dim=3)
    assert m.metric == "dot"
    m.add_vectors(np.array([[1.0, 0, 0], [0, 2.0, 0]]), ["a", "b"], ["a", "b"])
    (top,) = m.search_vectors(np.array([[0, 3.0, 0]]), k=1)
    assert top[0].id == "b" and top[0].score == pytest.approx(6.0)
    with pytest.raises(ValueError, match="no encoder"):
        m.search("text")


def test_duplicates_and_removals_stay_correct(memory):
    memory.add(FACTS[0], ids="dup")
    assert {h.id for h in memory.search(FACTS[0], k=2)} == {"e0", "dup"}
    memory.remove("e0")
    hits = memory.search(FACTS[0], k=4)
    assert "e0" not in {h.id for h in hits} and hits[0].id == "dup"
    assert len(memory) == 4 and len(memory.search(FACTS[0], k=10)) == 4
    with pytest.raises(ValueError, match="'dup' is already in the memory"):
        memory.add("anything", ids="dup")
    with pytest.raises(KeyError, match="no memory entry with id 'e0'"):
        memory.remove("e0")
    memory.add(FACTS[0], ids="e0")  # an id can come back after removal
    assert memory.search(FACTS[0], k=2)[0].score == pytest.approx(1.0, abs=1e-5)
    memory.clear()
    assert len(memory) == 0 and memory.search("x", k=3) == []


def test_bad_input_names_the_problem(memory):
    with pytest.raises(ValueError, match="text #1 is empty"):
        memory.add(["fine", "  "], ids=["a", "b"])
    with pytest.raises(ValueError, match="k=0"):
        memory.search("x", k=0)
    with pytest.raises(ValueError, match="given twice"):
        memory.add(["a", "b"], ids=["x", "x"])


def test_save_load_round_trips_exactly(memory, encoder, tmp_path):
    memory.remove("e1")
    memory.save(tmp_path)
    back = VectorMemory(encoder, index=memory.kind).load(tmp_path)
    assert back.index.ntotal == 3  # an hnsw save drops removed entries from the graph
    assert back.ids == memory.ids
    q = ["Eiffel Tower", "a car maker", "Colosseum"]
    assert memory.search(q, 3) == back.search(q, 3)
    back.add("new fact", ids="e9")  # faiss ids keep counting after a load
    assert back.search("new fact", 1)[0].id == "e9" and len(back) == 4


def test_corrupt_or_mismatched_saves_are_refused(encoder, tmp_path):
    memory = VectorMemory(encoder)
    memory.add(FACTS, ids=["e0", "e1", "e2", "e3"])
    memory.save(tmp_path)
    with pytest.raises(MemoryStateError, match="index='flat'.*index='hnsw'"):
        VectorMemory(encoder, index="hnsw").load(tmp_path)
    with pytest.raises(MemoryStateError, match="metric='cosine', dim=384"):
        VectorMemory(dim=384).load(tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text())
    meta["entries"] = meta["entries"][:2]
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(MemoryStateError, match="different saves"):
        VectorMemory(encoder).load(tmp_path)
    (tmp_path / META_FILE).write_text("{not json")
    with pytest.raises(MemoryStateError, match="malformed"):
        VectorMemory(encoder).load(tmp_path)
    memory.save(tmp_path)
    (tmp_path / INDEX_FILE).write_bytes(b"garbage")
    with pytest.raises(MemoryStateError, match="corrupt"):
        VectorMemory(encoder).load(tmp_path)
    with pytest.raises(MemoryStateError, match="is missing"):
        VectorMemory(encoder).load(tmp_path / "nowhere")


def test_hnsw_removals_are_skipped_then_compacted_away():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    flat, hnsw = VectorMemory(dim=16, metric="cosine"), VectorMemory(dim=16, metric="cosine", index="hnsw")
    for m in (flat, hnsw):
        m.add_vectors(vectors, [str(i) for i in range(300)], [str(i) for i in range(300)])
    for i in range(60):  # below the compaction threshold: the graph keeps them, search skips them
        hnsw.remove(str(i))
        flat.remove(str(i))
    assert hnsw.index.ntotal == 300 and len(hnsw) == 240
    top = [h.id for h in hnsw.search_vectors(vectors[:60], k=3)[0]]
    assert len(top) == 3 and not set(top) & {str(i) for i in range(60)}
    hits = sum(hnsw.search_vectors(vectors[i:i + 1], 1)[0][0].id == str(i) for i in range(60, 300))
    assert hits >= 235  # approximate, but a stored vector finds itself
    for i in range(60, 70):  # the 65th removal passes the threshold: rebuilt without those 65
        hnsw.remove(str(i))
    assert len(hnsw) == 230 and hnsw.index.ntotal == 235
    assert hnsw.search_vectors(vectors[100:101], 1)[0][0].id == "100"
    with pytest.raises(ValueError, match="index='ivf' is unknown"):
        VectorMemory(dim=4, index="ivf")
