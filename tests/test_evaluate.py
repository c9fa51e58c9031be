"""The evaluation harness and the eval CLI, on tiny models and the shared CounterFact file."""
from __future__ import annotations

import json

import pytest

from kedit_teach.__main__ import main
from kedit_teach.data import EditCase, load_counterfact
from kedit_teach.editors import ICE, NoEdit
from kedit_teach.evaluate import MODES, aggregate, evaluate, probes_of

from .conftest import cli_error, shared
from .test_editors import CASE, OTHER, ftl

PROTOCOLS = ("teacher_forced", "teacher_forced_exact", "generation")


@pytest.mark.parametrize("mode", MODES)
def test_noedit_locality_is_exactly_one(gemma_tiny, mode):
    result = evaluate(NoEdit(*gemma_tiny), [CASE, OTHER], mode=mode, fluency_n=1, progress=False)
    for proto in PROTOCOLS:
        assert result["metrics"][proto]["locality"] == 1.0
        assert set(result["metrics"][proto]) >= {"reliability", "generality", "locality", "portability"}
    assert result["n"] == 2 and result["mode"] == mode and result["method"] == "noedit"
    assert [c["case_id"] for c in result["per_case"]] == ["c1", "c2"]
    assert len(result["per_case"][0]["probes"]) == len(probes_of(CASE))


def test_missing_probe_kinds_are_null(gemma_tiny):
    result = evaluate(NoEdit(*gemma_tiny), [OTHER], fluency_n=0, progress=False)
    assert result["metrics"]["generation"]["generality"] is None
    assert result["metrics"]["generation"]["portability"] is None
    assert result["fluency"]["ngram_entropy"] is None


def test_ftl_sequential_reaches_reliability_and_leaves_the_model_reset(gemma_tiny):
    editor = ftl(*gemma_tiny)
    result = evaluate(editor, [CASE], mode="sequential", fluency_n=1, progress=False)
    assert result["metrics"]["teacher_forced"]["reliability"] == 1.0
    assert result["timing"]["edit_s_mean"] > 0 and result["timing"]["total_s"] > 0
    assert 0 <= result["fluency"]["ngram_entropy"] and result["fluency"]["x100"] == pytest.approx(
        100 * result["fluency"]["ngram_entropy"])


def test_aggregate_weighs_cases_equally():
    rows = [{"case_id": "a", "kind": "generality", "teacher_forced": 1.0, "teacher_forced_exact": 1.0,
             "generation": 1.0}] * 3
    rows += [{"case_id": "b", "kind": "generality", "teacher_forced": 0.0, "teacher_forced_exact": 0.0,
              "generation": 0.0}]
    assert aggregate(rows)["teacher_forced"]["generality"] == 0.5


def test_ice_never_sees_the_target_when_scoring(gemma_tiny):
    editor = ICE(*gemma_tiny)
    editor.edit(CASE)
    inputs = editor.model_inputs([CASE.locality[0][0]])
    assert CASE.locality[0][1] not in inputs[0]


def test_unknown_mode_and_empty_cases(gemma_tiny):
    with pytest.raises(ValueError, match="mode='parallel' is unknown"):
        evaluate(NoEdit(*gemma_tiny), [CASE], mode="parallel")
    with pytest.raises(ValueError, match="no cases"):
        evaluate(NoEdit(*gemma_tiny), [])


def test_eval_cli_writes_the_documented_json(tmp_path, tiny_dirs, capsys):
    path = shared("counterfact", "counterfact-edit.json")
    out = tmp_path / "out.json"
    argv = ["eval", "--method", "ice", "--data", f"counterfact:{path}", "--n", "3", "--mode", "sequential",
            "--model", str(tiny_dirs["gemma3"]), "--fluency-n", "1", "--json", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert {"method", "model", "n", "mode", "metrics", "fluency", "timing", "per_case"} <= set(result)
    assert result["method"] == "ice" and result["n"] == 3 and result["mode"] == "sequential"
    for proto in PROTOCOLS:
        values = result["metrics"][proto]
        assert all(values[k] is None or 0 <= values[k] <= 1 for k in ("reliability", "generality", "locality"))
        assert values["portability"] is None  # CounterFact has no portability prompts
    timing = result["timing"]
    assert set(timing) == {"edit_s_mean", "edit_s_first", "edit_s_after_first", "infer_s_mean", "total_s"}
    edits = [c["edit_s"] for c in result["per_case"]]
    assert timing["edit_s_first"] == edits[0] and timing["edit_s_after_first"] == pytest.approx(sum(edits[1:]) / 2)
    assert f"the first {timing['edit_s_first']:.4f} s" in capsys.readouterr().out
    # cases are shuffled with the seed, so the same seed picks the same cases
    cases = load_counterfact(path)
    assert {c["case_id"] for c in result["per_case"]} <= {c.case_id for c in cases}


def test_eval_cli_lte_options(tiny_dirs, tmp_path, capsys):
    model = str(tiny_dirs["gemma3"])
    assert "--k only applies to --method lte" in cli_error(
        capsys, "eval", "--method", "ice", "--k", "2", "--model", model)
    assert "contradict" in cli_error(
        capsys, "eval", "--method", "lte", "--no-align", "--adapter", "x", "--model", model)
    out = tmp_path / "lte.json"
    main(["eval", "--method", "lte", "--no-align", "--k", "1", "--n", "2", "--fluency-n", "0",
          "--mode", "sequential", "--model", model, "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["method"] == "lte (unaligned)" and result["config"]["k"] == 1 and result["n"] == 2
    assert "lte (unaligned) on teach" in capsys.readouterr().out


def test_fluency_report_shows_the_words_beside_the_numbers(gemma_tiny):
    from kedit_teach import viz
    from kedit_teach.evaluate import fluency_report, fluency_reports
    from kedit_teach.metrics import ngram_entropy, repetition, said_after, says
    plain, ice = NoEdit(*gemma_tiny), ICE(*gemma_tiny)
    ice.edit(CASE)
    reports = {"unedited": fluency_report(plain, [CASE], 12), "ICE": fluency_report(ice, [CASE], 12)}
    for r in reports.values():
        (text,) = r["texts"]
        assert r["fluency_x100"] == pytest.approx(100 * ngram_entropy(text)) and r["repetition"] == repetition(text)
        assert r["answer"] in (0.0, 1.0)
        # the old answer after the new: only where the text says the new one and the case has an old one
        said = says(text, CASE.target_new) and CASE.ground_truth
        assert r["old_after_new"] == (float(said_after(text, CASE.target_new, CASE.ground_truth)) if said else None)
    assert reports["ICE"]["texts"] == ice.generate([CASE.prompt], 12)
    summary, texts = viz.fluency_tables(reports, [CASE.prompt])
    assert list(summary.index) == ["unedited", "ICE"] and summary.loc["unedited", "vs_unedited"] == 1.0
    assert "old_after_new" in summary.columns
    assert texts.loc[CASE.prompt, "ICE"] == reports["ICE"]["texts"][0]
    again = fluency_reports({"unedited": plain, "ICE": ice}, [CASE], 12)
    assert {k: r["texts"] for k, r in again.items()} == {k: r["texts"] for k, r in reports.items()}
    assert not plain.cases and not ice.cases  # each emptied after its turn


def test_curve_scores_the_edits_made_so_far(gemma_tiny):
    from kedit_teach.evaluate import curve
    points = curve(NoEdit(*gemma_tiny), [CASE, OTHER], checkpoints=[1, 2, 5], progress=False)
    assert [p["n_edits"] for p in points] == [1, 2]  # 5 is clipped to the number of cases
    assert all(p["metrics"]["generation"]["locality"] == 1.0 for p in points)
    assert points[0]["metrics"]["teacher_forced"]["portability"] is not None  # CASE has portability
    assert all(p["perplexity"] == p["perplexity_unedited"] > 1 for p in points)  # NoEdit changes nothing
    with pytest.raises(ValueError, match="at least one positive"):
        curve(NoEdit(*gemma_tiny), [CASE], checkpoints=[0])


def test_locality_probes_that_are_other_edits_are_dropped_when_edits_stand_together(gemma_tiny):
    from kedit_teach.evaluate import unrelated
    neighbour = EditCase(case_id="c3", subject="Japan", prompt=CASE.locality[0][0], target_new="Osaka")
    probes = [p for c in (CASE, neighbour) for p in probes_of(c)]
    kept = unrelated(probes, [CASE, neighbour])
    assert [p.prompt for p in probes if p not in kept] == [CASE.locality[0][0]]
    seq = evaluate(NoEdit(*gemma_tiny), [CASE, neighbour], mode="sequential", fluency_n=0, progress=False)
    single = evaluate(NoEdit(*gemma_tiny), [CASE, neighbour], mode="single", fluency_n=0, progress=False)
    assert seq["locality_probes_dropped"] == 1 and single["locality_probes_dropped"] == 0


def test_eval_cli_batch_mode_with_memit_makes_one_solve(tiny_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KEDIT_CACHE", str(tmp_path / "cache"))  # the tiny model's own statistics
    out = tmp_path / "memit.json"
    main(["eval", "--method", "alphaedit", "--n", "3", "--fluency-n", "0", "--mode", "batch",
          "--model", str(tiny_dirs["gemma3"]), "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["method"] == "alphaedit" and result["n"] == 3 and result["config"]["layers"] == [1, 2]
    assert len({c["edit_s"] for c in result["per_case"]}) == 1  # one edit() call: its time shared by all
