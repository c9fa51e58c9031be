"""Bad input on the command line: one line naming the problem and the fix, exit status 2, no
traceback; `--debug` re-raises. Real bugs are not caught (they keep their traceback)."""
from __future__ import annotations

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
