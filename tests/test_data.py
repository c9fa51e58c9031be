import io
import json
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest

from kedit_teach import data
from kedit_teach.data import (
    BENCHMARKS, BenchmarkUnavailable, EditCase, InvalidCase, disjoint_subjects, fetch_benchmark,
    first_answer, load_cases, load_counterfact, load_jsonl, load_knowedit, load_wikibio,
    load_zsre_mend, save_jsonl, subjects,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(rel: str) -> Path:
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"shared benchmark file {path} is not available")
    return path


def raw(rel: str) -> list[dict]:
    return json.loads(shared(rel).read_text(encoding="utf-8"))


def write_json(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def make_case(**overrides) -> EditCase:
    kwargs = dict(case_id=17, subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux is",
                  target_new="English", ground_truth="French",
                  rephrase_prompts=["Where Danielle Darrieux is from, people speak the language of"],
                  locality=[["Michel Rocard is a native speaker of", "French"]],
                  portability=[("Danielle Darrieux's first language is spoken in", "England")],
                  source="counterfact")
    return EditCase(**{**kwargs, **overrides})


@pytest.fixture(scope="module")
def cf_edit() -> list[EditCase]:
    return load_counterfact(shared("counterfact/counterfact-edit.json"))


@pytest.fixture(scope="module")
def cf_train() -> list[EditCase]:
    return load_counterfact(shared("counterfact/counterfact-train.json"))

# -----------------------------------------------------------------------------
# EditCase


def test_empty_target_message_names_record_field_and_fix():
    with pytest.raises(InvalidCase) as e:
        make_case(target_new="   ")
    assert str(e.value) == ("record counterfact#17: field 'target_new' is empty; "
                            "every edit needs a non-empty new target")


@pytest.mark.parametrize("overrides, name, problem", [
    (dict(prompt=""), "prompt", "is empty"),
    (dict(prompt=["a list"]), "prompt", "is a list, not a str"),
    (dict(subject=None), "subject", "is a NoneType, not a str"),
    (dict(ground_truth=""), "ground_truth", "is empty"),
    (dict(rephrase_prompts="not a list"), "rephrase_prompts", "is a str, not a list"),
    (dict(rephrase_prompts=["ok", " "]), "rephrase_prompts", "item 1 is empty"),
    (dict(locality=[("only a prompt",)]), "locality", "item 0 is"),
    (dict(locality=[("p", "a"), ("p", "")]), "locality", "item 1 answer is empty"),
    (dict(portability=[("p", 3)]), "portability", "item 0 answer is a int"),
    (dict(case_id=True), "case_id", "is a bool"),
])
def test_invalid_fields_are_named(overrides, name, problem):
    with pytest.raises(InvalidCase) as e:
        make_case(**overrides)
    msg = str(e.value)
    assert msg.startswith(f"record counterfact#{overrides.get('case_id', 17)}: field '{name}' ")
    assert problem in msg
    assert msg.count(";") >= 1 and msg.rsplit(";", 1)[1].strip()  # a fix hint follows


def test_normalisation():
    case = make_case(target_new=" Noctuidae", subject="", locality=[["p", "a"]])
    assert case.case_id == "17"
    assert case.target_new == "Noctuidae"
    assert case.subject == ""
    assert case.locality == [("p", "a")] and isinstance(case.locality[0], tuple)
    assert case.descriptor == "The mother tongue of Danielle Darrieux is Noctuidae"


def test_round_trip():
    case = make_case()
    d = case.to_dict()
    assert d["locality"] == [["Michel Rocard is a native speaker of", "French"]]
    assert d["portability"] == [["Danielle Darrieux's first language is spoken in", "England"]]
    assert EditCase.from_dict(d) == case
    assert EditCase.from_dict(json.loads(json.dumps(d))) == case


def test_from_dict_rejects_unknown_and_missing_keys():
    d = make_case().to_dict()
    with pytest.raises(InvalidCase, match=r"record counterfact#17: field 'rephrase' is not an EditCase field"):
        EditCase.from_dict({**d, "rephrase": "x"})
    del d["target_new"]
    with pytest.raises(InvalidCase, match=r"field 'target_new' is missing"):
        EditCase.from_dict(d)


@pytest.mark.parametrize("x, expected", [
    ("French", "French"),
    (["Aspidoceratidae", "other"], "Aspidoceratidae"),
    ([["Soviet Union", "USSR"], ["Russia"]], "Soviet Union"),
    ([[], ["Honorary Doctor"]], "Honorary Doctor"),
    ([[]], None),
    ([], None),
    ("  ", None),
    (None, None),
])
def test_first_answer(x, expected):
    assert first_answer(x) == expected

# -----------------------------------------------------------------------------
# loaders on the real files


def test_counterfact_edit(cf_edit):
    assert len(cf_edit) == 10000
    assert len({c.case_id for c in cf_edit}) == 10000
    first = raw("counterfact/counterfact-edit.json")[0]
    assert cf_edit[0] == EditCase(
        case_id="0", subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux is",
        target_new="English", ground_truth="French", rephrase_prompts=[first["rephrase_prompt"]],
        locality=[(first["locality_prompt"], first["locality_ground_truth"])], source="counterfact")
    assert len(load_counterfact(shared("counterfact/counterfact-edit.json"), n=5)) == 5


def test_knowedit_zsre():
    cases = load_knowedit(shared("knowedit/ZsRE-test-all.json"))
    assert len(cases) == 1304
    assert {c.source for c in cases} == {"knowedit-zsre"}
    assert sum(len(c.portability) > 0 for c in cases) == 1304
    assert cases[0] == EditCase(
        case_id="0", subject="Epaspidoceras", prompt="Which family does Epaspidoceras belong to?",
        target_new="Noctuidae", ground_truth="Aspidoceratidae", rephrase_prompts=["What family are Epaspidoceras?"],
        locality=[("The taxon rank of Epaspidoceras is", "genus"), ("Epaspidoceras taxon rank", "genus")],
        portability=[("What is the common name for the family Epaspidoceras belongs to?", "Owlet moths")],
        source="knowedit-zsre")
    assert cases[16].target_new == "Charity River"  # stored as " Charity River"


def test_knowedit_counterfact():
    with pytest.warns(UserWarning, match="dropped 2 "):  # two probes with answer ""
        cases = load_knowedit(shared("knowedit/train_cf.json"))
    assert len(cases) == 1428
    assert {c.source for c in cases} == {"knowedit-cf"}
    assert all(c.rephrase_prompts == [] for c in cases)
    assert cases[630].ground_truth is None  # stored as ""
    assert sum(len(c.portability) > 0 for c in cases) == 1420
    assert cases[0].portability[1] == ("The name of the country which Gorsedd of Brittany is associated with is",
                                       "Franche-Comté")


def test_training_loads_drop_empty_answers_quietly():
    """Training data loses its empty-answer probes without a warning (a red box in notebooks 04
    and 05); a scored load still says so, and any other warning still shows."""
    from kedit_teach.data import dropping_quietly
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with dropping_quietly():
            quiet = load_knowedit(shared("knowedit/train_cf.json"))
            warnings.warn("another warning")
    assert [str(w.message) for w in seen] == ["another warning"]
    with pytest.warns(UserWarning, match="dropped 2 "):
        assert len(load_knowedit(shared("knowedit/train_cf.json"))) == len(quiet)


def test_knowedit_recent_alias_lists():
    with pytest.warns(UserWarning, match="dropped 7 "):  # probes whose answer is [[]] or [[], []]
        cases = load_knowedit(shared("knowedit/recent_train.json"))
    assert len(cases) == 570
    assert {c.source for c in cases} == {"knowedit-recent"}
    assert cases[0].ground_truth is None
    assert cases[0].locality[1] == ("The name of the country of citizenship of Ingrīda Amantova is", "Soviet Union")
    assert cases[3].locality[-1][1] == "Honorary Doctor at Karolinska Institutet"  # answer was [[], [...]]


def test_wikibio():
    cases = load_wikibio(shared("knowedit/wikibio-test-all.json"))
    first = raw("knowedit/wikibio-test-all.json")[0]
    assert len(cases) == 306
    assert cases[0].subject == "john russell reynolds"
    assert cases[0].prompt == first["text"].strip() and cases[0].target_new == first["labels"]
    assert cases[0].locality == [("The field of work of john russell reynolds is", "medicine"),
                                 ("john russell reynolds field of work", "medicine")]

# -----------------------------------------------------------------------------
# loaders on small files


def test_counterfact_rome_nested_format(tmp_path):
    rec = {"case_id": 0, "requested_rewrite": {
        "prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
        "target_new": {"str": "English", "id": "Q1860"}, "target_true": {"str": "French", "id": "Q150"}},
        "paraphrase_prompts": ["Where Danielle Darrieux is from, people speak the language of"],
        "neighborhood_prompts": ["Michel Rocard is a native speaker of", "Jacques Chaban-Delmas spoke"]}
    [case] = load_counterfact(write_json(tmp_path / "counterfact.json", [rec]))
    assert case.prompt == "The mother tongue of Danielle Darrieux is"
    assert (case.target_new, case.ground_truth) == ("English", "French")
    assert case.locality == [("Michel Rocard is a native speaker of", "French"),
                             ("Jacques Chaban-Delmas spoke", "French")]


def test_malformed_record_names_index_and_field(tmp_path):
    good = {"case_id": 5, "prompt": "p", "target_new": "t", "subject": "s", "ground_truth": "g",
            "rephrase_prompt": "r", "locality_prompt": "lp", "locality_ground_truth": "la"}
    path = write_json(tmp_path / "cf.json", [good, {**good, "case_id": 9, "target_new": ""}])
    with pytest.raises(InvalidCase, match=r"^cf\.json\[1\]: record counterfact#9: field 'target_new' is empty"):
        load_counterfact(path)
    missing = {k: v for k, v in good.items() if k != "rephrase_prompt"}
    with pytest.raises(InvalidCase, match=r"^cf\.json\[0\]: record counterfact#5: field 'rephrase_prompt' is missing"):
        load_counterfact(write_json(path, [missing]))
    with pytest.raises(InvalidCase, match=r"^cf\.json\[1\]: .*field 'case_id' repeats"):
        load_counterfact(write_json(path, [good, good]))


def test_zsre_mend_and_jsonl(tmp_path):
    recs = [{"subject": "Watts Humphrey", "src": "What university did Watts Humphrey attend?",
             "alt": "University of Michigan", "answers": ["Illinois Institute of Technology"],
             "rephrase": "What university did Watts Humphrey take part in?", "pred": "x", "cond": "y",
             "loc": "nq question: who played desmond doss father in hacksaw ridge", "loc_ans": "Hugo Weaving"},
            {"subject": "Ramalinaceae", "src": "Which family does Ramalinaceae belong to?", "alt": "Lecanorales",
             "answers": ["Lecanorales"], "rephrase": "What family are Ramalinaceae?",
             "loc": "nq question: types of skiing in the winter olympics 2018", "loc_ans": "Downhill"}]
    cases = load_zsre_mend(write_json(tmp_path / "zsre.json", recs))
    assert [c.case_id for c in cases] == ["0", "1"] and cases[0].source == "zsre"
    assert cases[0].ground_truth == "Illinois Institute of Technology"
    assert cases[0].rephrase_prompts == ["What university did Watts Humphrey take part in?"]
    assert cases[0].locality == [("who played desmond doss father in hacksaw ridge", "Hugo Weaving")]
    jsonl = tmp_path / "zsre.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in recs) + "\n", encoding="utf-8")
    assert load_zsre_mend(jsonl) == cases


def test_knowedit_lone_probe_and_source_from_content(tmp_path):
    rec = {"subject": "Epaspidoceras", "prompt": "Which family does Epaspidoceras belong to?",
           "target_new": "Noctuidae", "ground_truth": ["Aspidoceratidae"], "rephrase_prompt": "What family?",
           "locality": {"Relation_Specificity": {"prompt": "The taxon rank of Epaspidoceras is",
                                                 "ground_truth": ["genus"]}},
           "portability": {}}
    [case] = load_knowedit(write_json(tmp_path / "edits.json", [rec]))
    assert case.source == "knowedit-zsre"
    assert case.locality == [("The taxon rank of Epaspidoceras is", "genus")]
    no_rephrase = {k: v for k, v in rec.items() if k != "rephrase_prompt"}
    assert load_knowedit(write_json(tmp_path / "edits.json", [no_rephrase]))[0].source == "knowedit-cf"
    del no_rephrase["ground_truth"]
    assert load_knowedit(write_json(tmp_path / "edits.json", [no_rephrase]))[0].source == "knowedit-recent"
    bad = {**rec, "portability": {"Reasoning": [{"prompt": "q"}]}}
    with pytest.raises(InvalidCase, match=r"edits\.json\[0\]: .*field 'portability\.Reasoning'"):
        load_knowedit(write_json(tmp_path / "edits.json", [bad]))

# -----------------------------------------------------------------------------
# load_cases and the teaching set


def test_load_cases_specs(tmp_path):
    with pytest.raises(ValueError, match="teach, counterfact:PATH, zsre:PATH"):
        load_cases("squad:/some/file.json")
    with pytest.raises(ValueError, match="unknown data spec"):
        load_cases("counterfact:")
    with pytest.raises(FileNotFoundError, match=r"python -m kedit_teach download NAME.*zsre-mend"):
        load_cases(f"zsre:{tmp_path / 'nope.json'}")


def test_split_by_subject_keeps_subjects_apart_and_is_seeded():
    cases = [EditCase(case_id=str(i), subject=f"S{i % 30}" if i % 7 else f"s{i % 30}", prompt=f"Where is S{i}?",
                      target_new="Rome") for i in range(120)]
    train, held = data.split_by_subject(cases, seed=0, train_share=2 / 3)
    assert not subjects(train) & subjects(held)  # "S3" and "s3" are one subject
    assert len(train) + len(held) == 120 and 0.6 <= len(train) / 120 <= 0.75
    assert [c.case_id for c in train] == sorted((c.case_id for c in train), key=int)  # the file's order kept
    again, other = data.split_by_subject(cases, 0, 2 / 3), data.split_by_subject(cases, 1, 2 / 3)
    assert again == (train, held) and other != (train, held)
    with pytest.raises(ValueError, match="train_share"):
        data.split_by_subject(cases, 0, 1.0)


def test_the_zsre_parts_and_their_record(tmp_path):
    shared("knowedit/ZsRE-test-all.json")
    train, held = load_cases("zsre-train"), load_cases("zsre-held-out")
    assert len(train) + len(held) == 1304 and not subjects(train) & subjects(held)
    assert 0.6 <= len(train) / 1304 <= 0.72
    record = data.split_record("zsre-held-out")
    assert record["held_out"] == len(held) and record["train"] == len(train) and record["seed"] == 0
    assert data.split_record("teach") is None and data.split_record("knowedit:x.json") is None
    assert load_cases("zsre-held-out", n=5, seed=0) == load_cases("zsre-held-out", n=5, seed=0) != held[:5]
    with pytest.raises(FileNotFoundError):
        load_cases(f"zsre-held-out:{tmp_path / 'nope.json'}")
    with pytest.raises(ValueError, match="unknown ZsRE part"):
        data.load_zsre_part("zsre-test")


def test_load_cases_seeded_shuffle():
    spec = f"counterfact:{shared('counterfact/counterfact-edit.json')}"
    head = load_cases(spec, n=20)
    assert [c.case_id for c in head] == [c.case_id for c in load_counterfact(spec.split(":", 1)[1], n=20)]
    a, b, c = (load_cases(spec, n=20, seed=s) for s in (0, 0, 1))
    assert len(a) == 20 and a == b
    assert a != c and a != head


def test_teach_set(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "TEACH_PATH", tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl.*scripts/build_teach_set\.py"):
        load_cases("teach")
    cases = [make_case(case_id=i, subject=f"s{i}") for i in range(3)]
    save_jsonl(cases, tmp_path / "teach.jsonl")
    assert load_jsonl(tmp_path / "teach.jsonl") == cases
    monkeypatch.setattr(data, "TEACH_PATH", tmp_path / "teach.jsonl")
    assert load_cases("teach", n=2) == cases[:2]

# -----------------------------------------------------------------------------
# disjoint subjects


def test_disjoint_subjects_small():
    train = [make_case(case_id=i, subject=s) for i, s in enumerate(["Paris", " paris ", "Rome", ""])]
    held_out = [make_case(subject="PARIS"), make_case(subject="")]
    assert subjects(held_out) == {"paris"}
    assert [c.case_id for c in disjoint_subjects(train, held_out)] == ["2", "3"]


def test_one_per_subject_keeps_each_subjects_first_case_and_every_unnamed_one():
    cases = [make_case(case_id=i, subject=s) for i, s in enumerate(["Paris", "Rome", " paris ", "", "ROME", "", "Oslo"])]
    assert [c.case_id for c in data.one_per_subject(cases)] == ["0", "1", "3", "5", "6"]


def test_counterfact_train_edit_share_529_subjects(cf_edit, cf_train):
    assert len(subjects(cf_edit) & subjects(cf_train)) == 529
    kept = disjoint_subjects(cf_train, cf_edit)
    assert len(kept) == 9303  # 697 train cases mention one of the 529 subjects
    assert not subjects(kept) & subjects(cf_edit)

# -----------------------------------------------------------------------------
# fetch_benchmark (never touches the network)


def test_fetch_cache_hit(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("fetch_benchmark went online for a cached file")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    cached = tmp_path / "ZsRE-test-all.json"
    cached.write_text("[]")
    assert fetch_benchmark("knowedit-zsre", tmp_path) == cached


def test_fetch_offline(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(BenchmarkUnavailable) as e:
        fetch_benchmark("counterfact", tmp_path)
    assert "offline" in str(e.value)
    assert BENCHMARKS["counterfact"] in str(e.value) and str(tmp_path / "counterfact.json") in str(e.value)
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_fetch_download_and_unknown_name(tmp_path, monkeypatch):
    seen = []

    def fake_urlopen(url, timeout):
        seen.append((url, timeout))
        return io.BytesIO(b"[1, 2]")
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    path = fetch_benchmark("zsre-mend", tmp_path / "cache")
    assert path == tmp_path / "cache" / "zsre_mend_eval.json" and path.read_text() == "[1, 2]"
    assert seen == [(BENCHMARKS["zsre-mend"], 30)]
    assert [p.name for p in path.parent.iterdir()] == ["zsre_mend_eval.json"]
    with pytest.raises(ValueError, match="knowedit-zsre"):
        fetch_benchmark("squad", tmp_path)


def test_downloads_go_to_the_checkouts_data_folder_which_documents_every_data_set(tmp_path, monkeypatch):
    root = Path(__file__).resolve().parents[1]
    assert data.download_dir() == root / "data"  # this is a checkout
    readme = (root / "data" / "README.md").read_text()
    bundled = [p.name for p in data.ASSETS.glob("*.jsonl")]
    bundled += [p.relative_to(data.ASSETS).as_posix() for folder in ("general", "bench") for p in (data.ASSETS / folder).iterdir()]
    assert bundled and all(f"`{name}`" in readme for name in [*BENCHMARKS, *bundled])
    for url in BENCHMARKS.values():  # the file each download writes is named there too
        assert url.rsplit("/", 1)[1] in readme
    monkeypatch.setattr(data, "CHECKOUT_DATA", tmp_path / "no-checkout")  # an installed wheel
    assert data.download_dir() == data.CACHE_DIR
