"""Methods take turns on one loaded model: each editor is built, edits, and is detached, and the
model's modules and weights are then exactly as loaded. This is how a Colab user with one 7B model
compares methods. The walk visits every ordered pair of methods (GRACE then LTE used to fail:
GRACE's wrapper stayed on the layer that LTE's LoRA wants). The tour is built on the same turns."""
from __future__ import annotations

import pytest
import torch

from kedit_teach import mend
from kedit_teach import prompt_learning as pl
from kedit_teach.data import EditCase
from kedit_teach.editors import GRACE, LTE, METHODS, RECIPE
from kedit_teach.evaluate import probes_of, reference
from kedit_teach.memory import VectorMemory
from kedit_teach.models import load_model
from kedit_teach.tour import EIFFEL, NEXT_STEPS, format_tour, take_turns

from .conftest import CORPUS
from .test_lte import EDIT, trained  # noqa: F401  (the tiny aligned adapter fixture)


def every_ordered_pair(items: list[str]) -> list[str]:
    """A walk in which every ordered pair (a, b), a != b, occurs as two consecutive visits (an
    Eulerian circuit of the complete directed graph, by Hierholzer's algorithm)."""
    unused = {a: [b for b in items if b != a] for a in items}
    stack, walk = [items[0]], []
    while stack:
        if unused[stack[-1]]:
            stack.append(unused[stack[-1]].pop())
        else:
            walk.append(stack.pop())
    return walk[::-1]


def snapshot(model) -> tuple[list[tuple[str, str]], dict[str, torch.Tensor]]:
    return ([(n, type(m).__name__) for n, m in model.named_modules()],
            {k: v.detach().clone() for k, v in model.state_dict().items()})


STATS_TEXTS = CORPUS * 8  # enough keys for the tiny model's C (d_k = 128)
LOCATE = ("rome", "memit", "alphaedit")


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KEDIT_CACHE", str(tmp_path / "cache"))  # the tiny model's layer statistics (ROME, MEMIT)


def builders(model, tok, encoder, adapter) -> dict:
    """method -> a function building its editor on a model: fast settings for the tiny model."""
    modules = pl.RecipeModules(pl.ModuleConfig.for_model(model, d_rep=32), encoder)
    network = mend.MendNetwork(mend.MendConfig.for_model(model, n_layers=2, rank=8))
    build = {"lte": lambda m: LTE(m, tok, VectorMemory(encoder), adapter=adapter),
             "mend": lambda m: METHODS["mend"](m, tok, network=network),
             "recipe": lambda m: RECIPE(m, tok, modules=modules), "grace": lambda m: GRACE(m, tok, n_iter=3),
             "ft-l": lambda m: METHODS["ft-l"](m, tok, steps=2, norm_constraint=1e-2),
             **{m: (lambda m, name=m: METHODS[name](m, tok, corpus=STATS_TEXTS, steps=2)) for m in LOCATE}}
    return {name: build.get(name, lambda m, name=name: METHODS[name](m, tok)) for name in METHODS}


def test_every_method_in_turn_on_one_model_leaves_it_as_loaded(tiny_dirs, encoder, trained, own_cache):  # noqa: F811
    model, tok = load_model(str(tiny_dirs["gemma3"]))
    build = builders(model, tok, encoder, trained[0])
    names, weights = snapshot(model)
    ids = torch.tensor([[2, 5, 9, 11, 7]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    walk = every_ordered_pair(list(METHODS))
    assert len({(a, b) for a, b in zip(walk, walk[1:])}) == len(METHODS) * (len(METHODS) - 1)
    for method in walk:
        editor = build[method](model)
        (info,) = editor.edit(EDIT)
        editor.score([EDIT.prompt], [EDIT.target_new])
        model = editor.detach()
        after_names, after = snapshot(model)
        assert after_names == names, f"{method} left other modules in the model"
        assert after.keys() == weights.keys() and all(torch.equal(after[k], weights[k]) for k in weights), method
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, logits), method
        with pytest.raises(RuntimeError, match="detached"):
            editor.edit(EDIT)


def test_every_editor_gives_the_unedited_answers_so_the_grid_asks_them_once(tiny_dirs, encoder, trained,  # noqa: F811
                                                                           own_cache):
    """The grid shares the unedited model's locality answers between methods (evaluate.reference):
    right only if, before its first edit, no editor changes what the model says."""
    model, tok = load_model(str(tiny_dirs["gemma3"]))
    build = builders(model, tok, encoder, trained[0])
    cases = [EDIT, EditCase(case_id="e3", subject="Toyota", prompt="Toyota was founded in", target_new="Germany",
                            locality=[("Honda is a company from", "Japan"), ("The Louvre is in", "Paris")])]
    probes = [p for c in cases for p in probes_of(c)]
    shared: dict = {}
    first = reference(build["noedit"](model), probes, batch_size=2, shared=shared)
    assert sorted(first) == [i for i, p in enumerate(probes) if p.kind == "locality"] and len(shared) == 1
    for method in METHODS:
        editor = build[method](model)
        assert reference(editor, probes, batch_size=2) == first, method  # asked afresh through this editor

        def must_not_run(*a, **k):
            raise AssertionError("the shared answers were asked again")
        editor.score = editor.generate = must_not_run
        assert reference(editor, probes, batch_size=2, shared=shared) == first
        model = editor.detach()
    assert reference(build["noedit"](model), probes, batch_size=3, shared=shared) == first and len(shared) == 2


# ----------------------------------------------------------------------------- the tour

def test_every_method_takes_a_turn_and_the_model_is_left_as_loaded(tiny_dirs, encoder, trained, own_cache):  # noqa: F811
    model, tok = load_model(str(tiny_dirs["gemma3"]))
    names, _ = snapshot(model)
    settings = {"lte": {"adapter": trained[0], "memory": VectorMemory(encoder)}, "grace": {"n_iter": 3},
                "recipe": {"modules": pl.RecipeModules(pl.ModuleConfig.for_model(model, d_rep=32), encoder)},
                "ft-l": {"steps": 2}, **{m: {"corpus": STATS_TEXTS, "steps": 2} for m in LOCATE},
                "mend": {"network": mend.MendNetwork(mend.MendConfig.for_model(model, n_layers=2, rank=8))}}
    rows, back = take_turns(model, tok, EIFFEL, settings=settings, progress=False)
    assert [r["method"] for r in rows] == [m for m in METHODS if m != "noedit"]
    assert snapshot(back)[0] == names
    for r in rows:
        assert r["summary"] and r["edit_s"] > 0
        assert [a["kind"] for a in r["answers"]] == ["edit prompt", "rephrasing", "portability", "unrelated"]
        assert [a["prompt"] for a in r["answers"]] == [EIFFEL.prompt, EIFFEL.rephrase_prompts[0], EIFFEL.portability[0][0],
                                                      EIFFEL.locality[0][0]]
        assert all(a["before"] == b["before"] for a, b in zip(r["answers"], rows[0]["answers"]))  # one unedited run
    text = format_tour(EIFFEL, rows)
    assert text.endswith(NEXT_STEPS) and all(r["summary"] in text for r in rows)
    assert text.count("\n") > len(rows) + 8


@pytest.mark.real
def test_the_tour_on_the_real_model(real):
    model, tok = real
    rows, _ = take_turns(model, tok, EIFFEL, methods=["ice", "lte", "recipe"], progress=False)
    right = {r["method"]: {a["kind"]: a["right"] for a in r["answers"]} for r in rows}
    assert all(r["edit prompt"] for r in right.values()), right
    # retrieval gates (LTE's adapter, RECIPE's sentinel) keep the unrelated answer; ICE's text doesn't
    assert right["lte"]["unrelated"] and right["recipe"]["unrelated"], right
    assert rows[0]["answers"][0]["before"].startswith("Paris")
