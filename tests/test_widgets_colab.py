"""The widget tests again, under ipywidgets 7.7.1: the version Colab ships (the main run has 8.x).

A virtual environment that sees every package of the interpreter running pytest (system Python,
a virtualenv or conda) except ipywidgets, which it pins to 7.7.1, runs tests/test_viz_widgets.py
in a subprocess. It needs the package registry once per run; without one the test is skipped with
the command to run by hand.
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COLAB_IPYWIDGETS = "7.7.1"


@pytest.fixture(scope="module")
def colab_python(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv-ipywidgets7")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # This interpreter's packages, seen from the new venv through a .pth file: `--system-site-packages`
    # would show the *base* interpreter's, which inside a virtualenv or conda env lack torch & co.
    # The venv's own site-packages comes first on sys.path, so its pinned ipywidgets wins.
    theirs = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(theirs) / "kedit-teach-parent-env.pth").write_text("\n".join(ours) + "\n")
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", f"ipywidgets=={COLAB_IPYWIDGETS}"],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.skip(f"could not install ipywidgets {COLAB_IPYWIDGETS} (offline?): {done.stderr[-300:]}; "
                    f"run `pip install ipywidgets=={COLAB_IPYWIDGETS}` in a venv and pytest tests/test_viz_widgets.py")
    return python


def test_widget_panels_pass_under_colabs_ipywidgets(colab_python):
    version = subprocess.run([str(colab_python), "-c", "import ipywidgets; print(ipywidgets.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version == COLAB_IPYWIDGETS
    done = subprocess.run([str(colab_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not real",
                           str(ROOT / "tests" / "test_viz_widgets.py")],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    assert done.returncode == 0, f"widget tests under ipywidgets {COLAB_IPYWIDGETS}: {summary}\n{done.stdout[-3000:]}"
    assert " passed" in summary and "failed" not in summary
