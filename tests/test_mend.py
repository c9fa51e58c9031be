"""MEND: the network (mend.py) and the editor (editors/mend.py).

Tiny random Gemma-3 models (4 layers): enough to test the gradient decomposition, the low-rank
update, the training plumbing and the weight bookkeeping; a `real` test runs the shipped network.
"""
from __future__ import annotations

import json

import pytest
import torch

from kedit_teach import mend
from kedit_teach import prompt_learning as pl
from kedit_teach.__main__ import main
from kedit_teach.editors import MEND, NoEdit
from kedit_teach.editors.base import EditorStateError
from kedit_teach.editors.weights import WeightEditError
from kedit_teach.layer_stats import down_proj
from kedit_teach.metrics import nll, pack_targets, target_logits, target_nll
from kedit_teach.models import format_prompt, load_model

from .conftest import cli_error
from .test_recipe import EDIT, OTHER, cases, stopped_after_a_checkpoint, training_file


@pytest.fixture(scope="module")
def tiny_model(tiny_dirs):
    return load_model(str(tiny_dirs["gemma3"]))


def edit_nll(model, tok, case=EDIT) -> float:
    with torch.no_grad():
        return float(target_nll(model, tok, [format_prompt(tok, case.prompt)], [case.target_new]))


def network(model, rank: int = 8, seed: int = 0) -> mend.MendNetwork:
    torch.manual_seed(seed)
    return mend.MendNetwork(mend.MendConfig.for_model(model, n_layers=2, rank=rank))


def test_running_norm_gives_the_mean_and_std_of_every_token_seen():
    norm = mend.RunningNorm(3).train()
    chunks = [torch.randn(n, 3) * 4 + 2 for n in (5, 1, 9)]
    for c in chunks:
        norm(c)
    seen = torch.cat(chunks)
    norm.eval()
    x = torch.randn(4, 3)
    assert torch.allclose(norm(x), (x - seen.mean(0)) / (seen.std(0) + 1e-7), atol=1e-5)
    assert norm.count == 15 and torch.equal(norm(x), norm(x))  # frozen outside training


def test_an_untrained_network_is_one_step_of_fine_tuning(tiny_model):
    """g starts as the identity, so the update is -alpha times the gradient of the edit's NLL with
    respect to W, which MEND never forms: it is the sum of the tokens' rank-one terms (Sec. 3.1)."""
    model, tok = tiny_model
    net = network(model).eval()
    layers = list(net.config.layers)
    change = net.update(net.pseudo(mend.edit_factors(model, tok, layers, [EDIT.prompt], [EDIT.target_new])))
    weights = [down_proj(model, l).weight for l in layers]
    batch = pack_targets(tok, [format_prompt(tok, EDIT.prompt)], [EDIT.target_new])
    with torch.enable_grad():
        for w in weights:
            w.requires_grad_(True)
        grads = torch.autograd.grad(nll(target_logits(model, batch), batch.gold), weights)
        for w in weights:
            w.requires_grad_(False)
    for l, g in zip(layers, grads):
        assert torch.allclose(change[l], -1e-4 * g, atol=1e-9, rtol=1e-4), l


def test_the_low_rank_update_is_the_weight_update_and_each_row_gets_its_own(tiny_model):
    model, tok = tiny_model
    net = network(model)
    with torch.no_grad():  # a g that is not the identity
        for layer in net.g.layers:
            layer.U.normal_(0, 0.1)
    net.eval()
    layers = list(net.config.layers)
    pseudo = net.pseudo(mend.edit_factors(model, tok, layers, [EDIT.prompt, OTHER.prompt],
                                          [EDIT.target_new, OTHER.target_new]))
    query = pack_targets(tok, [format_prompt(tok, EDIT.rephrase_prompts[0])] * 2, ["Rome"] * 2)
    with torch.no_grad(), mend.low_rank_updates(model, net, pseudo, torch.tensor([0, 1])):
        factored = target_logits(model, query)
    for row in (0, 1):
        change = net.update(pseudo, row)
        with torch.no_grad():
            for l, d in change.items():
                down_proj(model, l).weight.add_(d)
            whole = target_logits(model, query)
            for l, d in change.items():
                down_proj(model, l).weight.sub_(d)
        rows = query.rows == row
        assert torch.allclose(factored[rows], whole[rows], atol=1e-4), row
    assert not torch.allclose(factored[query.rows == 0], factored[query.rows == 1])


def test_training_moves_g_and_alpha_and_learns_the_token_statistics(tiny_model):
    model, tok = tiny_model
    net = network(model)
    before, flags = net.trained_state(), [p.requires_grad for p in model.parameters()]
    examples = [pl.training_example(c) for c in cases(16)]
    curves = mend.train_mend(model, tok, net, examples, mend.MendTrainConfig(steps=3, batch_size=4), progress=False)
    assert set(curves) == {"loss", "edit", "loc", "alpha"} and all(len(v) == 3 for v in curves.values())
    assert all(torch.isfinite(torch.tensor(v)).all() for v in curves.values())
    after = net.trained_state()
    assert not torch.equal(after["g.layers.0.U"], before["g.layers.0.U"])
    assert not torch.equal(after["log_alpha"], before["log_alpha"]) and not net.training
    assert net.g.norm_u.count > 3 * 4 and net.fingerprint() != mend.fingerprint(before)
    assert [p.requires_grad for p in model.parameters()] == flags and all(p.grad is None for p in model.parameters())


def test_edit_reset_remove_save_load_and_refusals(tiny_model, tmp_path):
    model, tok = tiny_model
    net = network(model)
    base = edit_nll(model, tok)
    originals = {k: v.clone() for k, v in model.state_dict().items()}
    editor = MEND(model, tok, network=net)
    (info,) = editor.edit(EDIT)
    assert info["update_norm"] > 0 and info["tokens"] > 0
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, originals[k])]
    assert sorted(changed) == sorted(f"model.layers.{l}.mlp.down_proj.weight" for l in net.config.layers)
    assert edit_nll(model, tok) < base  # one step down the gradient
    editor.edit(OTHER)
    editor.remove("e1")  # replayed: OTHER alone on the original weights
    path = editor.save(tmp_path / "m")
    kept = {l: down_proj(model, l).weight.clone() for l in net.config.layers}
    editor.reset()
    assert all(torch.equal(v, originals[k]) for k, v in model.state_dict().items())  # bit for bit
    alone = MEND(editor.detach(), tok, network=net)
    alone.edit(OTHER)
    assert all(torch.equal(down_proj(model, l).weight, kept[l]) for l in net.config.layers)
    alone.reset()
    again = MEND(model, tok, network=net).load(path)
    assert list(again.cases) == ["e2"] and torch.equal(down_proj(model, net.config.layers[0]).weight,
                                                       kept[net.config.layers[0]])
    with pytest.raises(EditorStateError, match="config.network"):
        MEND(model, tok, network=network(model, seed=1)).load(path)
    assert list(again.cases) == ["e2"]  # nothing stored lost
    with pytest.raises(ValueError, match="empty"):
        again.edit(type(EDIT)(case_id="e9", subject="X", prompt="  ", target_new="Rome"))
    with pytest.raises(ValueError, match="already edited"):
        again.edit(OTHER)
    again.reset()
    assert all(torch.equal(v, originals[k]) for k, v in model.state_dict().items())
    other = mend.MendNetwork(mend.MendConfig("another-model", (0, 1), 128, 64, rank=8))
    with pytest.raises(mend.MendError, match="field 'network.model' is 'another-model'.*train mend --model"):
        MEND(model, tok, network=other)


def test_packed_weights_are_refused(tiny_dirs):
    model, tok = load_model(str(tiny_dirs["gemma3"]))

    class Linear4bit(torch.nn.Linear):  # what bitsandbytes puts there: a Linear subclass with packed weights
        pass
    net = network(model)
    mlp = model.model.layers[-1].mlp
    mlp.down_proj = Linear4bit(mlp.down_proj.in_features, mlp.down_proj.out_features, bias=False)
    assert "packed" in MEND.unsupported(model)
    with pytest.raises(WeightEditError, match="packed.*quantization=None"):
        MEND(model, tok, network=net)


def test_saved_networks_load_and_bad_files_are_refused(tiny_model, tmp_path):
    model, _ = tiny_model
    net = network(model)
    record = mend.make_record(net, mend.MendTrainConfig(), {"examples": 0}, {"loss": [1.0]}, 1.0)
    path = mend.save_network(net, tmp_path / "n", record)
    loaded, rec = mend.load_network(path)
    assert loaded.fingerprint() == net.fingerprint() == rec["fingerprint"] and not loaded.training
    (path / "record.json").write_text(json.dumps({"network": {"rank": 3}}))
    with pytest.raises(mend.MendError, match="malformed.*'network'"):
        mend.load_network(path)
    (path / "record.json").write_text(json.dumps(record))
    (path / mend.WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(mend.MendError, match="corrupt"):
        mend.load_network(path)


def test_train_mend_cli_checkpoints_and_goes_on(tiny_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KEDIT_CACHE", str(tmp_path / "cache"))
    data, out = training_file(tmp_path / "train.json", 16), tmp_path / "net"
    args = ["train", "mend", "--model", str(tiny_dirs["gemma3"]), "--data", f"counterfact:{data}", "--out", str(out),
            "--batch-size", "4", "--rank", "8"]
    with stopped_after_a_checkpoint(monkeypatch, mend, "save_network"):
        main(args + ["--steps", "4", "--checkpoint-every", "2"])
    stopped = json.loads((out / "record.json").read_text())
    assert stopped["partial"] and stopped["steps"] == 2 and stopped["network"]["rank"] == 8
    main(args[:8] + ["--resume", str(out)])
    done = json.loads((out / "record.json").read_text())
    assert "partial" not in done and done["steps"] == 4 and done["loss"]["loss"][:2] == stopped["loss"]["loss"]
    assert "wrote" in capsys.readouterr().out
    assert "holds a finished run" in cli_error(capsys, "train", "mend", "--model", str(tiny_dirs["gemma3"]),
                                               "--resume", str(out))
    assert "--rank only applies to `train mend`" in cli_error(capsys, "train", "serac", "--rank", "4")


# ----------------------------------------------------------------------------- the shipped network

@pytest.mark.real
def test_the_shipped_network_edits_the_real_model_and_reset_restores_it(real):
    model, tok = real
    before = edit_nll(model, tok)
    editor = MEND(model, tok)
    assert editor.record["fingerprint"] == editor.network.fingerprint() and "partial" not in editor.record
    (info,) = editor.edit(EDIT)
    assert edit_nll(model, tok) < before - 1.0 and info["edit_s"] < 5, (before, edit_nll(model, tok), info)
    assert editor.generate(EDIT.prompt, max_new_tokens=3).strip().startswith(EDIT.target_new)
    editor.reset()
    assert edit_nll(editor.detach(), tok) == before  # the weights back bit for bit
