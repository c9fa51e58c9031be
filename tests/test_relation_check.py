"""RECIPE's relation check: subject masking, training pairs, the trained head, the editor's decisions.

The real MiniLM encoder under untrained RECIPE modules of a tiny Gemma-3 (the check reads only
f_rm's pooled features); the shipped check on the real 270M model at the end (marked `real`).
"""
from __future__ import annotations

import pytest
import torch

from kedit_teach import prompt_learning as pl
from kedit_teach import relation_check as rc
from kedit_teach.data import EditCase
from kedit_teach.editors import RECIPE
from kedit_teach.models import load_model

from .conftest import cli_error, shared

# (edit prompt, rephrasing, another relation of the same subject), X for the subject
RELATIONS = [("X is located in the city of", "X can be found in the city of", "X was designed by the architect"),
             ("The currency of X is the", "In X, people pay with the", "The official language of X is"),
             ("Who founded X?", "X was founded by whom?", "When did X close down?"),
             ("X plays the position of", "On the field, X plays as a", "X was born in the year"),
             ("What river flows through X?", "Which river runs through X?", "How many people live in X?"),
             ("X is a member of the band", "X plays in the band", "X studied at the university of"),
             ("The mother tongue of X is", "X grew up speaking", "X died in the city of"),
             ("Which company makes X?", "X is made by which company?", "What colour is X?")]
SUBJECTS = ["Zorblat Tower", "Quenfield", "Mira Tellvane", "Brask Motors", "Kelmor", "Ostvik", "Pellan Gate", "Tarrow"]


def examples() -> list[pl.TrainingExample]:
    out = []
    for i, s in enumerate(SUBJECTS):
        for j, (e, g, other) in enumerate(RELATIONS):
            e, g, other = (t.replace("X", s) for t in (e, g, other))
            out.append(pl.TrainingExample(f"{i}-{j}", f"{e} A", e, "A", g, "A", other, "B", (), s))
    return out


@pytest.fixture(scope="module")
def modules(tiny_dirs, encoder):
    model, _ = load_model(str(tiny_dirs["gemma3"]))
    return pl.RecipeModules(pl.ModuleConfig.for_model(model, d_rep=32), encoder)


@pytest.fixture(scope="module")
def features(modules):
    return modules.features


@pytest.fixture(scope="module")
def trained(modules):
    head = rc.RelationHead()
    result = rc.train_relation_check(head, modules, examples(), rc.RelationTrainConfig(steps=150, batch_size=64,
                                                                                        held_out_templates=0.3))
    return head, result


def test_names_whole_words_in_any_case_and_masks_the_subjects_sentence():
    assert rc.names("where is the EIFFEL tower?", "Eiffel Tower")
    assert not rc.names("Parisian cafes are", "Paris") and not rc.names("anything", " ")
    assert rc.masked("Leo was born in 1974. Paris is the capital of", "Paris") == "X is the capital of"
    assert rc.masked("Where is Paris? It is in", "Paris") == "Where is X? It is in"  # the rest stays
    assert rc.masked("no subject here", "Paris") == "no subject here"


def test_pairs_label_rephrasings_same_and_the_subjects_other_relations_another():
    e = examples()[0]
    assert rc.relation_pairs([e]) == [("X can be found in the city of", "X is located in the city of", 1.0),
                                      ("X was designed by the architect", "X is located in the city of", 0.0)]
    unnamed = pl.TrainingExample("u", "k", "The capital is", "A", "It is", "A", "Other", "B", (), "Zorblat")
    assert rc.relation_pairs([unnamed]) == []
    with pytest.raises(ValueError, match="rephrasings and locality prompts"):
        rc.train_relation_check(rc.RelationHead(), None, [unnamed])


def test_other_templates_pair_a_case_with_templates_whose_answers_never_meet_its_own():
    n = rc.MIN_TEMPLATE_EDITS

    def cases(template, answers, count=n, tag=""):
        return [pl.TrainingExample(f"{tag}{template}{i}", "k", template.replace("X", f"Subj{tag}{i}"), answers[i % len(answers)],
                                   template.replace("X", f"Subj{tag}{i}") + " then", "a", "Other", "b", (), f"Subj{tag}{i}")
                for i in range(count)]

    city = cases("X is located in the city of", ["Paris", "Rome"])
    town = cases("X can be found in", ["rome", "Oslo"], tag="t")  # meets city's answers: may be one relation
    lang = cases("The mother tongue of X is", ["French", "Dutch"], tag="l")
    few = cases("X was founded by", ["Ann"], count=n - 1, tag="f")  # too few edits to tell
    pairs = rc.other_templates(city + town + lang + few)
    assert len(pairs) == 3 * n and all(label == 0.0 for *_, label in pairs)
    partner = {"X is located in the city of": {"The mother tongue of X is"}, "X can be found in": {"The mother tongue of X is"},
               "The mother tongue of X is": {"X is located in the city of", "X can be found in"}}
    for query, template, _ in pairs:
        own = next(t for t in partner if query.startswith(t))
        assert template in partner[own] and "Subj" not in query
    assert {t for _, t, _ in pairs} == {"X is located in the city of", "X can be found in", "The mother tongue of X is"}
    assert rc.other_templates(city + town + lang + few) == pairs and rc.other_templates(city) == []  # seeded; one kind alone: none


def test_training_separates_the_relations_and_sets_the_threshold_on_unseen_templates(trained, features):
    head, result = trained
    loss = result["curves"]["loss"]
    assert sum(loss[-10:]) < sum(loss[:10]) / 2
    held = result["held_out"]
    assert 0 < result["held_out_pairs"] < result["pairs"] and head.config.threshold == held["threshold"]
    assert 0 < held["threshold"] < 1 and set(held) == {"threshold", "same relation accepted", "another relation refused"}
    pairs = [pair for pair in rc.relation_pairs(examples()) if not rc.held_out_template(pair[1], 0.3)]
    with torch.no_grad():
        p = torch.sigmoid(head(features([a for a, _, _ in pairs]), features([b for _, b, _ in pairs])))
    y = torch.tensor([label for *_, label in pairs])
    assert min(rc.rates(p, y, 0.5)) > 0.9  # on its training pairs


def test_decide_attaches_the_best_named_hit_of_the_same_relation_or_nothing(trained, features):
    head, _ = trained
    stored = [("a", "Zorblat Tower", "Zorblat Tower is located in the city of"),
              ("b", "Zorblat Tower", "Who founded Zorblat Tower?"), ("c", "Kelmor", "Kelmor is located in the city of")]
    assert rc.decide(head, features, ["The weather today is"], [stored]) == [None]  # no stored subject named
    [(attached, score)] = rc.decide(head, features, ["Zorblat Tower can be found in the city of"], [stored])
    assert attached == "a" and score > head.config.threshold
    [(attached, score)] = rc.decide(head, features, ["Zorblat Tower was designed by the architect"], [stored])
    assert attached is None and score <= head.config.threshold
    queries = ["The weather today is", "Zorblat Tower can be found in the city of", "Zorblat Tower was designed by the architect"]
    batch = rc.decide(head, features, queries, [stored] * 3)  # one pass, split back per query
    alone = [rc.decide(head, features, [q], [stored])[0] for q in queries]
    assert batch[0] is None and [b[0] for b in batch[1:]] == [a[0] for a in alone[1:]]
    assert [b[1] for b in batch[1:]] == pytest.approx([a[1] for a in alone[1:]], abs=1e-4)


def test_recipe_with_the_check_decides_named_queries_by_relation_and_saves_its_fingerprint(
        trained, tiny_dirs, encoder, tmp_path):
    head, result = trained
    folder = rc.save_check(head, tmp_path / "check", rc.make_record(head, rc.RelationTrainConfig(), {}, result, 1.0))
    loaded, record = rc.load_check(folder)
    assert record["fingerprint"] == loaded.fingerprint() == head.fingerprint()
    model, tok = load_model(str(tiny_dirs["gemma3"]))
    modules = pl.RecipeModules(pl.ModuleConfig.for_model(model, d_rep=32), encoder)
    plain = RECIPE(model, tok, modules=modules, sentinel=False, threshold=-1e9)  # attaches the top hit to anything
    checked = RECIPE(model, tok, modules=modules, sentinel=False, threshold=-1e9, relation_check=folder)
    assert "relation_check" not in plain.config() and checked.config()["relation_check"] == head.fingerprint()
    edit = EditCase(case_id="z", subject="Zorblat Tower", prompt="Zorblat Tower is located in the city of", target_new="Lisbon")
    for editor in (plain, checked):
        editor.edit([edit])
    queries = ["Zorblat Tower can be found in the city of", "Zorblat Tower was designed by the architect", "The sky is"]
    assert [d.attached for d in plain.retrieve(queries)] == ["z", "z", "z"]
    decided = checked.retrieve(queries)
    assert [d.attached for d in decided] == ["z", None, "z"]  # the unnamed query keeps the gate's decision
    assert decided[2].relation is None and decided[1].relation <= head.config.threshold
    assert checked.inspect(queries[1])["relation"] == pytest.approx(decided[1].relation)
    passes, features = [], checked.modules.features
    checked.modules.features = lambda texts, *a: passes.append(list(texts)) or features(texts, *a)
    checked.retrieve(["Where is Zorblat Tower? In the city of", "Who built Zorblat Tower?"])
    masked = [texts for texts in passes if "Where is X? In the city of" in texts]
    # both queries' masked texts in one encoder pass; the stored prompt's was encoded for the queries before
    assert len(masked) == 1 and "Who built X?" in masked[0]
    assert not any("X is located in the city of" in texts for texts in passes)
    checked.modules.features = features
    (folder / rc.WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(rc.RelationCheckError, match="corrupt"):
        rc.load_check(folder)


def test_eval_refuses_the_relation_check_for_another_method(capsys):
    assert "--relation-check only applies to --method recipe" in cli_error(capsys, "eval", "--method", "ice",
                                                                             "--relation-check")


@pytest.mark.real
def test_the_shipped_check_turns_away_questions_about_a_stored_subjects_other_relations(real):
    from kedit_teach.data import ZSRE_FILE, load_cases, load_teach
    from kedit_teach.editors.recipe import gate_sweep, labelled_queries
    shared(*ZSRE_FILE.split("/"))
    recipe = RECIPE(*real, relation_check=True)
    assert recipe.relation.fingerprint() == rc.load_check(rc.SHIPPED)[1]["fingerprint"]
    stored = load_cases("zsre-held-out")[:100]  # never trained on, by the modules or the check
    recipe.edit(stored)
    queries = labelled_queries(stored)
    on = gate_sweep(recipe, queries, [0.0])["sentinel"]
    recipe.relation_check = False
    off = gate_sweep(recipe, queries, [0.0])["sentinel"]
    # all 434 stored (bench_recipe sentinel): the sentinel 0.862 / 0.724 / 0.756, with the check 0.982 / 0.800 / 0.984
    assert on["edit prompt"] >= 0.95 and on["locality"] >= 0.95, on
    assert on["locality"] > off["locality"] and on["rephrasing"] >= off["rephrasing"], (on, off)
    # the teaching set's landmarks ("X is a famous" beside "X is located in the city of"): 1.000 / 1.000 /
    # 0.953; a check trained without pairs across templates (other_templates) gave locality 0.094
    recipe.reset()
    recipe.relation_check = True
    held_out = load_teach()[:pl.TEACH_HELD_OUT]
    recipe.edit(held_out)
    teach = gate_sweep(recipe, labelled_queries(held_out), [0.0])["sentinel"]
    assert min(teach.values()) >= 0.9, teach
