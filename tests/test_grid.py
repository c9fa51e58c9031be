"""The benchmark grid and general ability: the plan, resumable cells, skipped cells kept with their
reason, the same cases for every method, the model left as loaded; the shipped general questions
answered by the unedited 270M model."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from kedit_teach import general, grid
from kedit_teach.editors import METHODS, NoEdit
from kedit_teach.metrics import perplexity

from .conftest import cli_error
from .test_turns import snapshot


def test_plan_puts_single_editing_first_and_batch_only_where_a_method_solves_batches():
    cells = grid.plan(["ice", "memit"], [100, 1, 10], ["teach"])
    assert [(c.method, c.mode, c.n) for c in cells] == [
        ("ice", "single", 1), ("ice", "sequential", 10), ("ice", "sequential", 100),
        ("memit", "single", 1), ("memit", "sequential", 10), ("memit", "batch", 10),
        ("memit", "sequential", 100), ("memit", "batch", 100)]
    with pytest.raises(ValueError, match="unknown method"):
        grid.plan(["wise"], [1], ["teach"])
    with pytest.raises(ValueError, match="positive"):
        grid.plan(["ice"], [0], ["teach"])


def test_teach_is_its_held_out_part_in_a_seeded_order():
    a, b = grid.load_data("teach", seed=0), grid.load_data("teach", seed=1)
    assert len(a) == grid.TEACH_HELD_OUT and {c.case_id for c in a} == {c.case_id for c in b}
    assert [c.case_id for c in a] != [c.case_id for c in b]
    assert [c.case_id for c in a] == [c.case_id for c in grid.load_data("teach", seed=0)]


def test_skip_reasons():
    seq = grid.Cell("teach", "rome", "sequential", 100)
    assert "holds 64 cases, fewer than 100" in grid.skip_reason(seq, 64, 10, None, None)
    assert "over the 5-min cell budget" in grid.skip_reason(seq, 200, 10, 16.0, 300)
    assert grid.skip_reason(seq, 200, 10, 1.0, 300) is None
    assert grid.skip_reason(grid.Cell("teach", "rome", "single", 1), 200, 10, 99.0, 1) is None  # the estimate's source


def test_grid_runs_resumes_and_leaves_the_model_as_loaded(gemma_tiny, tmp_path, monkeypatch):
    model, tok = gemma_tiny
    names, weights = snapshot(model)
    cells = grid.plan(["noedit", "ice", "grace"], [1, 2, 100], ["teach"])
    settings = {"grace": {"n_iter": 2}}
    rows = grid.run_grid(model, tok, cells, tmp_path, settings=settings, single_n=2, progress=False,
                         single_fluency_n=0)
    assert [(r["method"], r["mode"], r["n"]) for r in rows] == [(c.method, c.mode, c.n) for c in cells]
    done = [r for r in rows if r["status"] == "done"]
    assert {(r["mode"], r["n"]) for r in done} == {("single", 1), ("sequential", 2)}
    assert all("fewer than 100" in r["reason"] for r in rows if r["n"] == 100)
    after_names, after = snapshot(model)
    assert after_names == names and all(torch.equal(after[k], weights[k]) for k in weights)

    results = {c.key: json.loads((tmp_path / "cells" / f"{c.key}.json").read_text()) for c in cells if c.n < 100}
    same = {k: [p["case_id"] for p in r["per_case"]] for k, r in results.items() if "sequential" in k}
    assert len(set(map(tuple, same.values()))) == 1 and len(next(iter(same.values()))) == 2
    seq = results["teach-noedit-sequential-n2"]
    assert seq["metrics"]["teacher_forced"]["locality"] == 1.0 and seq["general"]["n_questions"] == len(general.questions())
    assert results["teach-noedit-single-n1"]["general"] is None and seq["grid"]["peak_memory_mb"] > 0
    # the course grid's fluency: with the edits in place, not after each single edit
    assert results["teach-noedit-single-n1"]["fluency"]["n"] == 0 and seq["fluency"]["n"] == 2

    with open(tmp_path / "grid.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(cells) and table[0]["method"] == "noedit"
    assert "skipped: teach holds 64 cases" in (tmp_path / "grid.md").read_text()
    summary = grid.load_summary(tmp_path)
    assert summary["rows"] == rows and summary["machine"]["model"]["parameters_m"] > 0

    def must_not_run(*a, **k):
        raise AssertionError("a done cell ran again")
    monkeypatch.setattr(grid, "run_cell", must_not_run)
    assert grid.run_grid(model, tok, cells, tmp_path, settings=settings, single_n=2, progress=False) == rows


def test_a_cell_over_budget_is_kept_as_skipped(gemma_tiny, tmp_path, capsys):
    model, tok = gemma_tiny
    cells = grid.plan(["ice"], [1, 2], ["teach"])
    rows = grid.run_grid(model, tok, cells, tmp_path, single_n=1, budget_s=1e-9)
    assert rows[0]["status"] == "done" and rows[1]["status"] == "skipped" and "cell budget" in rows[1]["reason"]
    bars = capsys.readouterr().err
    assert "benchmark grid" in bars and "ice [single]" in bars  # a bar over the grid, and one over a cell's edits
    assert not (tmp_path / "cells" / f"{cells[1].key}.json").exists()  # a later, bigger budget runs it


def test_a_method_without_trained_parts_for_this_model_is_skipped_with_the_fix(gemma_tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("KEDIT_CACHE", str(tmp_path / "cache"))
    model, tok = gemma_tiny
    rows = grid.run_grid(model, tok, grid.plan(["mend", "ice"], [1], ["teach"]), tmp_path, single_n=1, progress=False)
    assert [r["status"] for r in rows] == ["skipped", "done"] and "train mend --model" in rows[0]["reason"]


def test_the_estimate_comes_from_the_largest_cell_so_far_in_the_same_mode(gemma_tiny, tmp_path):
    """A batch edit costs less per edit than a single one: N = 1's time would misjudge the others."""
    model, tok = gemma_tiny
    grid.run_grid(model, tok, grid.plan(["ice"], [1, 2], ["teach"]), tmp_path, single_n=1, progress=False)
    for key, s in (("teach-ice-single-n1", 1e-9), ("teach-ice-sequential-n2", 1e6)):
        path = tmp_path / "cells" / f"{key}.json"
        result = json.loads(path.read_text())
        result["timing"]["edit_s_mean"] = s
        path.write_text(json.dumps(result))
    rows = grid.run_grid(model, tok, grid.plan(["ice"], [1, 2, 4], ["teach"]), tmp_path, single_n=1,
                         budget_s=10.0, progress=False)
    assert rows[2]["status"] == "skipped" and "the N = 2 sequential cell's mean" in rows[2]["reason"]


def test_a_grid_without_general_ability_leaves_its_columns_empty(gemma_tiny, tmp_path):
    rows = grid.run_grid(*gemma_tiny, grid.plan(["noedit"], [2], ["teach"]), tmp_path, single_n=1, progress=False,
                         general=False)
    result = json.loads((tmp_path / "cells" / "teach-noedit-sequential-n2.json").read_text())
    assert result["general"] is None and rows[0]["status"] == "done" and rows[0]["perplexity"] is None


def test_load_summary_refuses_what_is_not_a_summary(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `python -m kedit_teach bench"):
        grid.load_summary(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a grid summary"):
        grid.load_summary(tmp_path / "x.json")


def test_bench_cli_bad_input(capsys, tmp_path):
    assert "unknown method(s) wise" in cli_error(capsys, "bench", "--methods", "wise", "--out", str(tmp_path))
    line = cli_error(capsys, "bench", "--data", f"counterfact:{tmp_path / 'nope.json'}", "--out", str(tmp_path))
    assert "nope.json does not exist" in line


def test_bench_runs_the_course_grid_and_the_reference_grid_with_full(monkeypatch, capsys, tmp_path):
    planned = []

    def plan(methods, ns, datasets):  # stop before the model loads, with what the flags chose
        planned.append((ns, datasets))
        raise ValueError("planned")
    monkeypatch.setattr(grid, "plan", plan)
    for argv in ([], ["--full"], ["--full", "--n", "1000"], ["--data", "zsre"]):
        cli_error(capsys, "bench", "--out", str(tmp_path), *argv)
    course, full = grid.GRIDS["course"], grid.GRIDS["full"]
    assert planned == [(course["n"], course["data"]), (full["n"], full["data"]), ([1000], full["data"]),
                       (course["n"], ["zsre"])]
    assert 100 not in course["n"] and "teach" not in course["data"] and course["single_n"] < full["single_n"]


def test_perplexity_in_chunks_equals_one_block(gemma_tiny):
    model, tok = gemma_tiny
    text = general.passage()[:3000]
    enc = tok(text, return_tensors="pt")
    assert enc.input_ids.shape[1] > 256  # more than one chunk
    with torch.no_grad():
        logits = model(**enc).logits[0, :-1].float()
    whole = math.exp(torch.nn.functional.cross_entropy(logits, enc.input_ids[0, 1:]).item())
    assert perplexity(model, tok, text) == pytest.approx(whole, rel=1e-4)


def test_general_ability_goes_through_the_editor(gemma_tiny):
    model, tok = gemma_tiny
    pairs = general.questions()[:3]
    rows = general.ask(NoEdit(model, tok), pairs)
    assert [r["prompt"] for r in rows] == [q for q, _ in pairs] and all(0 <= r["teacher_forced"] <= 1 for r in rows)
    ice = METHODS["ice"](model, tok)
    ice.edit(grid.load_data("teach")[0])
    seen = []
    ice.model_inputs = lambda prompts, inner=ice.model_inputs: seen.extend(prompts) or inner(prompts)
    ability = general.general_ability(ice)
    assert seen[:len(general.questions())] == [q for q, _ in general.questions()]  # asked through the editor
    assert ability["perplexity"] > 1 and ability["n_questions"] == len(general.questions())


@pytest.mark.real
def test_the_unedited_model_answers_every_shipped_question_and_the_passage_is_long(real):
    model, tok = real
    rows = general.ask(NoEdit(model, tok))
    wrong = [(r["prompt"], r["generated"]) for r in rows if not r["generation"]]
    assert len(rows) >= 50 and not wrong, wrong
    assert 1500 <= len(tok(general.passage()).input_ids) <= 2500
    assert 3 < perplexity(model, tok, general.passage()) < 40


def test_papers_table_puts_recipes_table_1_beside_our_first_and_largest_n():
    def row(method, mode, n, v):
        return {"data": "counterfact", "method": method, "mode": mode, "n": n, "status": "done",
                **{f"tf_{k}": v for k in ("rel", "gen", "loc")}}
    rows = [row("rome", "single", 1, 1.0), row("rome", "sequential", 10, 0.5), row("rome", "batch", 100, 0.0),
            row("noedit", "single", 1, 0.0), {**row("grace", "sequential", 100, 0.9), "status": "skipped"}]
    table = grid.papers_table(rows)
    assert list(table.index) == ["rome"]  # NoEdit is not in the paper's table; a skipped cell has no numbers
    assert table.loc["rome", "paper, 1 edit"] == "39 / 21 / 97"  # r-ROME's row: our ROME's default key
    assert table.loc["rome", "ours, 1 edit"] == "100 / 100 / 100"
    assert table.loc["rome", "ours, most edits"] == "50 / 50 / 50 (N = 10)"  # sequential, not batch


def test_lte_papers_table_puts_serac_and_mend_beside_lte_s_table_1():
    def row(method, mode, data="zsre", **kw):
        return {"data": data, "method": method, "mode": mode, "n": 1, "status": "done", "fluency": 512.3,
                **{f"tf_{k}": 0.5 for k in ("rel", "port", "loc")}, **kw}
    rows = [row("serac", "single", tf_loc=0.25), row("mend", "sequential"), row("recipe", "single"),
            row("mend", "single", data="counterfact"), {**row("ice", "single"), "status": "skipped"}]
    table = grid.lte_papers_table(rows, "zsre", "zsre")
    assert list(table.index) == ["serac"]  # RECIPE is not in LTE's table; MEND's only cell here is sequential
    assert table.loc["serac", "paper: succ. / port. / loc."] == "100 / 56 / 30"
    assert table.loc["serac", "ours (N = 1)"] == "50 / 50 / 25" and table.loc["serac", "ours: fluency"] == "512"


def test_headline_has_one_row_per_method_and_says_skipped():
    rows = [{"data": "cf", "method": "ice", "mode": "single", "n": 1, "status": "done", "questions": None, "edit_s": 0.001,
             **{f"{p}_{k}": 1.0 for p in ("tf", "gen") for k in ("rel", "gen", "loc")}},
            {"data": "cf", "method": "ice", "mode": "sequential", "n": 100, "status": "skipped", "reason": "slow"},
            {"data": "cf", "method": "lte", "mode": "sequential", "n": 100, "status": "done", "questions": 0.9,
             "perplexity": 22.75, "edit_s": 0.01, **{f"{p}_{k}": 0.5 for p in ("tf", "gen") for k in ("rel", "gen", "loc")}}]
    table = grid.headline(rows, "cf")
    assert list(table.index) == ["ice", "lte"] and table.loc["lte", "teacher-forced, N = 1"] == "–"
    assert table.loc["lte", "questions / perplexity, N = 100"] == "0.90 / 22.8"
    assert table.loc["ice", "questions / perplexity, N = 100"] == "–" and "questions / perplexity, N = 1" not in table
    assert table.loc["ice", "teacher-forced, N = 1"] == "1.00 / 1.00 / 1.00"
    assert table.loc["ice", "generation, N = 100"] == "skipped" and table.loc["ice", "edit s"] == "0.001"
    ten = {**rows[0], "mode": "sequential", "n": 10, "edit_s": 0.002}
    assert grid.headline(rows + [ten], "cf", (1, 10, 100)).loc["ice", "edit s"] == "0.002"  # the largest N done


def test_headline_shows_portability_when_asked():
    row = {"data": "zsre", "method": "recipe", "mode": "sequential", "n": 100, "status": "done", "questions": 1.0,
           "perplexity": 22.7, "edit_s": 0.01, **{f"{p}_{k}": v for p in ("tf", "gen")
                                                   for k, v in zip(("rel", "gen", "loc", "port"), (0.9, 0.8, 0.7, 0.3))}}
    assert grid.headline([row], "zsre", (100,)).loc["recipe", "generation, N = 100"] == "0.90 / 0.80 / 0.70"
    table = grid.headline([row], "zsre", (100,), kinds=("rel", "gen", "loc", "port"))
    assert table.loc["recipe", "teacher-forced, N = 100"] == "0.90 / 0.80 / 0.70 / 0.30"


def test_merge_rows_replaces_a_cell_and_keeps_plan_order():
    def row(data, method, mode, n, status="done"):
        return {"data": data, "method": method, "mode": mode, "n": n, "status": status}
    old = [row("cf", "noedit", "single", 1), row("cf", "noedit", "sequential", 100),
           row("cf", "memit", "single", 1), row("cf", "memit", "batch", 10, "skipped")]
    new = [row("cf", "memit", "batch", 10), row("cf", "memit", "sequential", 10), row("zsre", "ice", "single", 1),
           row("cf", "noedit", "sequential", 1000)]
    merged = grid.merge_rows(old, new)
    assert [(r["data"], r["method"], r["mode"], r["n"]) for r in merged] == [
        ("cf", "noedit", "single", 1), ("cf", "noedit", "sequential", 100), ("cf", "noedit", "sequential", 1000),
        ("cf", "memit", "single", 1), ("cf", "memit", "sequential", 10), ("cf", "memit", "batch", 10),
        ("zsre", "ice", "single", 1)]
    assert all(r["status"] == "done" for r in merged)  # the skipped batch cell was replaced, not kept twice
    assert len(old) == 4 and old[3]["status"] == "skipped"  # the inputs are left as they were


def test_a_results_folder_from_another_run_or_a_broken_cell_is_refused(gemma_tiny, tmp_path):
    model, tok = gemma_tiny
    cells = grid.plan(["noedit"], [1], ["teach"])
    grid.run_grid(model, tok, cells, tmp_path, single_n=1, progress=False)
    with pytest.raises(grid.GridError, match="seed 0 on 1 cases, this run asks for seed 3 on 1; pass another --out"):
        grid.run_grid(model, tok, cells, tmp_path, seed=3, single_n=1, progress=False)
    with pytest.raises(grid.GridError, match="on 2; pass another --out"):
        grid.run_grid(model, tok, cells, tmp_path, single_n=2, progress=False)
    zsre = grid.plan(["noedit"], [1], ["zsre"])
    if (grid.SHARED_DIR / "knowedit" / "ZsRE-test-all.json").exists():  # a cell made on the whole ZsRE file
        path = tmp_path / "cells" / f"{zsre[0].key}.json"
        path.write_text(json.dumps({**json.loads((tmp_path / "cells" / f"{cells[0].key}.json").read_text()),
                                    "data": "zsre"}))
        with pytest.raises(grid.GridError, match="made on other cases of zsre .*zsre-held-out"):
            grid.run_grid(model, tok, zsre, tmp_path, single_n=1, progress=False)
    path = tmp_path / "cells" / f"{cells[0].key}.json"
    path.write_text('{"seed": 0, "n"')  # a cell cut short
    with pytest.raises(grid.GridError, match="is not a cell result .* delete it to run the cell again"):
        grid.run_grid(model, tok, cells, tmp_path, single_n=1, progress=False)
    assert not list((tmp_path / "cells").glob("*.part"))


def test_a_data_spec_becomes_a_file_name():
    cell = grid.Cell("counterfact:/data/cf edit.json", "ice", "sequential", 10)
    assert cell.key == "counterfact__data_cf_edit.json-ice-sequential-n10" and "/" not in cell.key


def test_costs_sum_the_done_cells_up_to_max_n_and_count_the_skipped():
    def row(data, method, n, seconds, status="done"):
        return {"data": data, "method": method, "mode": "sequential", "n": n, "status": status,
                "seconds": seconds if status == "done" else None}
    rows = [row("cf", "ice", 1, 60), row("cf", "ice", 10, 120), row("teach", "ice", 10, 30),
            row("cf", "rome", 1, 600), row("cf", "rome", 100, None, "skipped"), row("cf", "ice", 1000, 6000)]
    table = grid.costs(rows)
    assert table.loc["ice", "cf, min"] == 3.0 and table.loc["ice", "teach, min"] == 0.5  # N = 1,000 left out
    assert table.loc["ice", "total, min"] == 3.5 and table.loc["ice", "cells run"] == 3
    assert table.loc["rome", "skipped"] == 1 and table.loc["rome", "teach, min"] == 0.0
    assert table.loc["all", "total, min"] == 13.5 and table.loc["all", "skipped"] == 1
    assert grid.costs(rows, max_n=1000).loc["all", "total, min"] == 113.5


def test_skipped_cells_name_their_data_set_and_provenance_is_two_lines():
    summary = grid.load_summary()
    table = grid.skipped(summary["rows"])
    assert list(table.columns) == ["data", "method", "mode", "n", "reason"]
    assert len(table) == sum(r["status"] == "skipped" for r in summary["rows"])
    # the same method skipped on two data sets for two reasons: only the data column tells them apart
    assert {"counterfact", "teach"} <= set(table.data) and table.reason.str.len().min() > 0
    line = grid.provenance(summary)
    reruns = summary["machine"]["reruns"]
    assert line.count("\n") == 1 and f"{len(reruns)} later runs" in line and "grid.reruns(summary)" in line
    assert all(r["why"] not in line for r in reruns)  # the long reasons stay in the table
    assert list(grid.reruns(summary)["why"]) == [r["why"] for r in reruns]
    first_run = {**summary, "machine": {**summary["machine"], "reruns": []}}
    assert "\n" not in grid.provenance(first_run) and grid.reruns(first_run).empty
