"""Bad input on the command line: one line naming the problem and the fix, exit status 2, no
traceback; `--debug` re-raises. Real bugs are not caught (they keep their traceback)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from kedit_teach.__main__ import main
from kedit_teach.errors import UsageError
from kedit_teach.models import ModelLoadError

from .conftest import cli_error


def test_unknown_method_and_unknown_preset(capsys):
    assert "--method 'wise' is unknown; choose one of" in cli_error(capsys, "eval", "--method", "wise")
    assert "--layer only applies to --method rome" in cli_error(capsys, "eval", "--method", "ice", "--layer", "3")
    assert "Unknown model preset 'gemma-9'. Known presets:" in cli_error(capsys, "eval", "--model", "gemma-9")


def test_a_gpu_preset_on_a_cpu(capsys):
    line = cli_error(capsys, "eval", "--model", "qwen2.5-7b-instruct", "--quant", "4bit")
    assert "needs a GPU" in line and "gemma-3-270m" in line


def test_missing_and_malformed_data_files(capsys, tmp_path):
    line = cli_error(capsys, "eval", "--data", f"counterfact:{tmp_path / 'nope.json'}")
    assert "nope.json does not exist; run `python -m kedit_teach download NAME`" in line
    assert "unknown data spec 'countrfact:x'" in cli_error(capsys, "eval", "--data", "countrfact:x")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"case_id": 1,')
    assert "broken.json:1: neither a JSON list nor JSONL" in cli_error(capsys, "eval", "--data", f"counterfact:{broken}")
    record = tmp_path / "record.json"  # valid JSON, a record without its prompt
    record.write_text(json.dumps([{"case_id": 1, "requested_rewrite": {"subject": "x"}}]))
    assert "field 'requested_rewrite.prompt' is missing" in cli_error(capsys, "eval", "--data", f"counterfact:{record}")
    assert "can't be read as UTF-8 text" in cli_error(capsys, "eval", "--data", f"counterfact:{tmp_path}")


def test_a_missing_adapter(capsys, tiny_dirs, tmp_path):
    line = cli_error(capsys, "eval", "--method", "lte", "--adapter", str(tmp_path / "none"), "--n", "1",
                     "--model", str(tiny_dirs["gemma3"]))
    assert str(tmp_path / "none") in line and "train lte" in line


def test_debug_shows_the_error_and_bugs_are_not_caught(monkeypatch):
    with pytest.raises(ModelLoadError, match="Unknown model preset"):
        main(["eval", "--model", "gemma-9", "--debug"])
    assert issubclass(ModelLoadError, UsageError)

    def bug(args):
        raise KeyError("a real bug")
    monkeypatch.setattr("kedit_teach.__main__.cmd_info", bug)
    with pytest.raises(KeyError):
        main(["info"])


def test_through_a_real_process():
    done = subprocess.run([sys.executable, "-m", "kedit_teach", "eval", "--data", "counterfact:/nope.json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-500:]
    assert done.stderr.strip().splitlines() == [done.stderr.strip().splitlines()[-1]]  # one line
    assert done.stderr.startswith("error: /nope.json does not exist")


@pytest.fixture
def no_model(monkeypatch):
    """Bad arguments must stop the command before the model loads (42 s on a busy laptop)."""
    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")
    monkeypatch.setattr("kedit_teach.models.load_model", load_model)


@pytest.mark.parametrize("argv,flag,wanted", [
    (["eval", "--n", "0"], "--n", "got 0; pass a whole number of at least 1"),
    (["eval", "--n", "-1"], "--n", "got -1; pass a whole number of at least 1"),  # was: 247 cases, quietly
    (["eval", "--n", "five"], "--n", "'five' is not a whole number"),
    (["eval", "--batch-size", "0"], "--batch-size", "at least 1"),
    (["eval", "--fluency-n", "-2"], "--fluency-n", "at least 0"),
    (["eval", "--method", "rome", "--layer", "-1"], "--layer", "at least 0"),
    (["bench", "--n", "1", "0"], "--n", "at least 1"),
    (["bench", "--cell-budget", "0"], "--cell-budget", "above 0"),
    (["tour", "--n", "-3"], "--n", "at least 0"),
    (["train", "lte", "--lr", "nan"], "--lr", "above 0"),
    (["train", "mend", "--steps", "0"], "--steps", "at least 1"),
])
def test_bad_numbers_stop_before_the_model_loads(capsys, no_model, argv, flag, wanted):
    line = cli_error(capsys, *argv)
    assert line.startswith(f"error: argument {flag}: ") and wanted in line
    assert f"see `python -m kedit_teach {argv[0]} --help`" in line


def test_bad_flags_and_a_missing_command_are_one_line_too(capsys, no_model):
    assert "invalid choice: 'fast'" in cli_error(capsys, "eval", "--mode", "fast")
    assert "unrecognized arguments: --bogus" in cli_error(capsys, "eval", "--bogus")
    assert "required: command" in cli_error(capsys)


def test_data_without_cases_stops_before_the_model_loads(capsys, no_model, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    line = cli_error(capsys, "eval", "--data", f"counterfact:{empty}")
    assert f"--data counterfact:{empty} holds no cases" in line


def test_a_finished_mend_run_is_refused_before_the_model_loads(capsys, no_model, monkeypatch):
    monkeypatch.setattr("kedit_teach.prompt_learning.training_examples", lambda *a, **k: ([], {}))
    monkeypatch.setattr("kedit_teach.mend.load_network", lambda path: (None, {"steps": 10, "train": {}}))
    assert "holds a finished run" in cli_error(capsys, "train", "mend", "--resume", "some/folder")


def test_every_option_has_help_and_shows_its_default(capsys):
    from kedit_teach.__main__ import _Help, _parser
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) == {"info", "eval", "bench", "train", "download", "tour"}
    formatter = _Help("prog")
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
            if action.option_strings and not any(action.default is v for v in (None, False, argparse.SUPPRESS)):
                assert "default" in formatter._get_help_string(action), (name, action.option_strings)
    with pytest.raises(SystemExit) as done:
        main(["eval", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("cases evaluated (at most the data's) (default: 20)", "(default: single)", "(default: gemma-3-270m)",
                  "order) (default: 0)", "when scoring (default: 16)"):
        assert shown in text
