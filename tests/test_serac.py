"""SERAC: the scope classifier (scope.py) and the editor (editors/serac.py).

The real MiniLM with untrained or briefly trained top layers, tiny random Gemma-3 models and a
real faiss memory: enough to test the decision rule, the routing and the training plumbing.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from kedit_teach import prompt_learning as pl
from kedit_teach import scope
from kedit_teach.editors import NoEdit
from kedit_teach.editors.base import EditorStateError
from kedit_teach.editors.serac import SERAC
from kedit_teach.models import load_model

from .conftest import cli_error
from .test_recipe import EDIT, OTHER, cases, stopped_after_a_checkpoint, training_file


@pytest.fixture(scope="module")
def tiny_model(tiny_dirs):
    return load_model(str(tiny_dirs["gemma3"]))


@pytest.fixture(scope="module")
def classifier(encoder):
    return scope.ScopeClassifier(encoder=encoder)


def test_pair_labels_mark_positives_hard_negatives_and_two_edits_of_one_question():
    a, b = (pl.training_example(c) for c in cases(2))
    b.q_e = a.q_e  # two edits of the same question: a positive for each, never a negative for the other
    edits, queries, m = scope.pair_labels([a, b])
    assert edits == [a.knowledge, b.knowledge] and queries == [a.q_e, a.q_g, a.q_l, a.q_e, b.q_g, b.q_l]
    assert m["labels"].tolist() == [[1, 0], [1, 0], [0, 0], [0, 1], [0, 1], [0, 0]]
    assert m["hard"].tolist() == [[0, 0], [0, 0], [1, 0], [0, 0], [0, 0], [0, 1]]
    assert m["ignore"].tolist() == [[0, 1], [0, 0], [0, 0], [1, 0], [0, 0], [0, 0]]
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0], [1.5, -2.0]])
    got = scope.balanced_bce(logits, {"labels": torch.tensor([[1, 0], [0, 1], [0, 0]]).bool(),
                                      "hard": torch.tensor([[0, 0], [0, 0], [1, 0]]).bool(),
                                      "ignore": torch.tensor([[0, 1], [0, 0], [0, 0]]).bool()})
    assert got["pos"].item() == pytest.approx(F.softplus(-torch.tensor([2.0, 3.0])).mean().item())
    assert got["hard"].item() == pytest.approx(F.softplus(torch.tensor(1.5)).item())
    assert got["neg"].item() == pytest.approx(F.softplus(torch.tensor([0.5, -2.0])).mean().item())  # ignored: out


def test_the_training_path_equals_the_inference_path_and_only_the_top_trains(classifier, encoder):
    texts = ["Where is the Eiffel Tower?", "a", "The Eiffel Tower is located in the city of Rome"]
    h = classifier.embed(texts)
    assert h.shape == (3, 384) and torch.allclose(h.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(classifier.top_embed(classifier.lower_states(texts)), h, atol=1e-5, rtol=1e-5)
    state = classifier.trained_state()
    assert {"log_scale", "bias"} <= set(state)
    assert all(k in ("log_scale", "bias") or k.startswith("encoder.encoder.layer.5.") for k in state)
    p = classifier.probability(h, h)
    assert p.shape == (3, 3) and torch.all(p.diagonal() > 0.5)  # a text is in its own scope before training
    torch.testing.assert_close(classifier.probability_of(h @ h.T), p)  # the editor's path, from faiss's cosines
    with pytest.raises(ValueError, match="encoder tokens long"):
        classifier.embed(["word " * 200])
    with pytest.raises(ValueError, match="pick 1 to 6"):
        scope.ScopeClassifier(scope.ScopeConfig(top_layers=0), encoder)


def test_training_separates_in_scope_from_locality_and_leaves_the_lower_layers(encoder, tmp_path):
    clf = scope.ScopeClassifier(encoder=encoder)
    lower = {k: v.clone() for k, v in clf.state_dict().items() if k.startswith("encoder.encoder.layer.0.")}
    examples = [pl.training_example(c) for c in cases(48)]
    curves = scope.train_classifier(clf, examples, scope.ScopeTrainConfig(steps=30, batch_size=16, encoder_lr=1e-4),
                                    progress=False)
    assert len(curves["loss"]) == 30 and sum(curves["loss"][-5:]) < sum(curves["loss"][:5])
    assert sum(curves["p_hard"][-5:]) < sum(curves["p_hard"][:5])  # locality prompts leave the scope
    assert all(torch.equal(clf.state_dict()[k], v) for k, v in lower.items())
    saved = scope.save_classifier(clf, tmp_path / "c", scope.make_record(clf, scope.ScopeTrainConfig(), {}, curves, 1.0))
    loaded, record = scope.load_classifier(saved, encoder)
    assert loaded.fingerprint() == clf.fingerprint() == record["fingerprint"]
    torch.testing.assert_close(loaded.embed([EDIT.prompt]), clf.embed([EDIT.prompt]))
    (saved / scope.WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(scope.ClassifierError, match="corrupt"):
        scope.load_classifier(saved, encoder)
    (saved / scope.RECORD_FILE).write_text("{")
    with pytest.raises(scope.ClassifierError, match="malformed"):
        scope.load_classifier(saved, encoder)


@pytest.fixture
def serac(tiny_model, classifier):
    return SERAC(*tiny_model, classifier=classifier)


def test_in_scope_queries_read_the_edit_and_the_rest_run_as_the_base_model(serac, tiny_model):
    serac.edit([EDIT, OTHER])
    unrelated = "The capital of Japan is"
    assert serac.in_scope([EDIT.prompt, unrelated]) == ["e1", None]
    inputs = serac.model_inputs([EDIT.prompt, unrelated])
    assert EDIT.descriptor in inputs[0] and EDIT.descriptor not in inputs[1]
    base = NoEdit(*tiny_model)
    prompts = [unrelated, EDIT.prompt, "Toyota makes cars in"]
    mixed = serac.generate(prompts, max_new_tokens=4)
    assert mixed[0] == base.generate(unrelated, max_new_tokens=4)  # out of scope: the base model, its own batch
    assert mixed[1] == serac.generate(EDIT.prompt, max_new_tokens=4)  # a mixed batch gives what one alone gives
    assert serac.score([unrelated], ["Tokyo"]) == base.score([unrelated], ["Tokyo"])
    info = serac.inspect(EDIT.prompt)
    assert info["in_scope"] == "e1" and info["answered_by"].startswith("counterfactual")
    assert info["scope"][0]["case_id"] == "e1" and info["scope"][0]["probability"] > 0.5
    assert serac.inspect(unrelated)["answered_by"] == "base model"
    with serac.unedited():
        assert serac.model_inputs([EDIT.prompt]) == base.model_inputs([EDIT.prompt])
    serac.reset()
    assert serac.generate(prompts, max_new_tokens=4) == base.generate(prompts, max_new_tokens=4)


def test_threshold_remove_save_load_and_refusals(tiny_model, classifier, encoder, tmp_path):
    never = SERAC(*tiny_model, classifier=classifier, threshold=1.0)
    never.edit([EDIT])
    assert never.in_scope([EDIT.prompt]) == [None] and never.config()["threshold"] == 1.0
    editor = SERAC(*tiny_model, classifier=classifier)
    editor.edit([EDIT, OTHER])
    assert editor.in_scope([EDIT.prompt]) == ["e1"]
    editor.threshold = 1.0  # the decision follows a moved threshold; the scores stay cached
    assert editor.in_scope([EDIT.prompt]) == [None]
    editor.threshold = 0.5
    editor.remove("e2")
    assert editor.in_scope([OTHER.prompt]) != ["e2"]
    path = editor.save(tmp_path / "s")
    again = SERAC(*tiny_model, classifier=classifier).load(path)
    assert list(again.cases) == ["e1"] and again.in_scope([EDIT.prompt]) == ["e1"]
    other = scope.ScopeClassifier(encoder=encoder)
    with torch.no_grad():
        other.bias.add_(1.0)
    keep = SERAC(*tiny_model, classifier=other)
    keep.edit([OTHER])
    with pytest.raises(EditorStateError, match="config.classifier"):
        keep.load(path)
    assert list(keep.cases) == ["e2"]  # nothing stored lost
    meta = json.loads((path / "editor.json").read_text())
    meta["cases"].append(OTHER.to_dict())
    (path / "editor.json").write_text(json.dumps(meta))
    with pytest.raises(EditorStateError, match="different saves"):
        SERAC(*tiny_model, classifier=classifier).load(path)
    with pytest.raises(ValueError, match=r"threshold=2 is a probability: use a value in \[0, 1\]"):
        SERAC(*tiny_model, classifier=classifier, threshold=2)
    with pytest.raises(ValueError, match="counterfactual='model'"):
        SERAC(*tiny_model, classifier=classifier, counterfactual="model")
    assert editor.counterfactual == "prompt"  # "auto": no LTE adapter for a tiny random model
    with pytest.raises(ValueError, match="no LTE adapter .* counterfactual='prompt'"):
        SERAC(*tiny_model, classifier=classifier, counterfactual="lte")
    with pytest.raises(ValueError, match="already edited"):
        editor.edit([EDIT])
    with pytest.raises(ValueError, match="empty"):
        editor.generate("   ")


def test_train_serac_cli_checkpoints_and_goes_on(tiny_dirs, tmp_path, monkeypatch, capsys):
    from kedit_teach.__main__ import main
    monkeypatch.setenv("KEDIT_CACHE", str(tmp_path / "cache"))
    data, out = training_file(tmp_path / "train.json", 64), tmp_path / "clf"
    args = ["train", "serac", "--data", f"counterfact:{data}", "--out", str(out), "--batch-size", "16"]
    with stopped_after_a_checkpoint(monkeypatch, scope, "save_classifier"):
        main(args + ["--steps", "5", "--checkpoint-every", "3"])
    stopped = scope.read_record(out)
    assert stopped["partial"] and stopped["steps"] == 3
    main(["train", "serac", "--data", f"counterfact:{data}", "--resume", str(out), "--out", str(out)])
    done = scope.read_record(out)
    assert "partial" not in done and done["steps"] == 5 and done["loss"]["loss"][:3] == stopped["loss"]["loss"]
    assert done["train"]["batch_size"] == 16 and "wrote" in capsys.readouterr().out
    assert "holds a finished run" in cli_error(capsys, "train", "serac", "--resume", str(out))
    assert "--query-layers only applies to `train recipe`" in cli_error(capsys, "train", "serac", "--query-layers", "1")
    assert "--resume only applies to `train recipe` and `train serac` and `train mend`" in cli_error(
        capsys, "train", "lte", "--resume", str(out))


# ----------------------------------------------------------------------------- the shipped classifier

@pytest.mark.real
def test_the_shipped_classifier_routes_counterfact_edits_it_never_saw(real):
    from kedit_teach.data import load_counterfact
    from kedit_teach.editors.recipe import gate_sweep, labelled_queries

    from .conftest import shared
    edits = load_counterfact(shared("counterfact", "counterfact-edit.json"), n=200)
    unrelated = "The official language of Japan is"
    before = NoEdit(*real).generate(unrelated, max_new_tokens=8)
    editor = SERAC(*real)  # reads in-scope edits with the shipped LTE adapter
    assert editor.counterfactual == "lte" and editor.record["fingerprint"] == editor.classifier.fingerprint()
    editor.edit(edits)
    right = gate_sweep(editor, labelled_queries(edits), [0.5])["sentinel"]
    assert right["edit prompt"] >= 0.95 and right["rephrasing"] >= 0.85 and right["locality"] >= 0.8, right
    case = edits[0]
    said = editor.generate(case.prompt, max_new_tokens=8)
    assert editor.inspect(case.prompt)["in_scope"] == case.case_id and case.target_new.split()[0] in said, said
    assert editor.inspect(unrelated)["in_scope"] is None
    assert editor.generate(unrelated, max_new_tokens=8) == before  # the adapter stays off out of scope
    model = editor.detach()
    assert not hasattr(model, "peft_config") and NoEdit(model, real[1]).generate(unrelated, max_new_tokens=8) == before
