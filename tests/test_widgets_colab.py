"""The widget tests again, under the ipywidgets versions students meet and the main run lacks:
7.7.1, the version Colab ships, and 8, what `pip install -r requirements.txt` picks (the main run
has 7.8 from requirements-dev.txt, for live widgets on RISE slides).

For each, a virtual environment that sees every package of the interpreter running pytest (system
Python, a virtualenv or conda) except ipywidgets, which it pins, runs tests/test_viz_widgets.py in a
subprocess. It needs the package registry once per run; without one the test is skipped with the
command to run by hand.
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# (name, pip requirement, the version prefix it must give)
VERSIONS = [("colab", "ipywidgets==7.7.1", "7.7.1"), ("latest-8", "ipywidgets>=8,<9", "8.")]


@pytest.fixture(scope="module", params=VERSIONS, ids=[v[0] for v in VERSIONS])
def side_python(request, tmp_path_factory) -> tuple[Path, str]:
    """(python of a venv with this ipywidgets, the version prefix expected)."""
    _, requirement, expected = request.param
    venv = tmp_path_factory.mktemp(f"venv-{request.param[0]}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # This interpreter's packages, seen from the new venv through a .pth file: `--system-site-packages`
    # would show the *base* interpreter's, which inside a virtualenv or conda env lack torch & co.
    # The venv's own site-packages comes first on sys.path, so its pinned ipywidgets wins.
    theirs = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(theirs) / "kedit-teach-parent-env.pth").write_text("\n".join(ours) + "\n")
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", requirement],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.skip(f"could not install {requirement} (offline?): {done.stderr[-300:]}; "
                    f"run `pip install '{requirement}'` in a venv and pytest tests/test_viz_widgets.py")
    return python, expected


def test_widget_panels_pass_under_other_ipywidgets(side_python):
    python, expected = side_python
    version = subprocess.run([str(python), "-c", "import ipywidgets; print(ipywidgets.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version.startswith(expected)
    done = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not real",
                           str(ROOT / "tests" / "test_viz_widgets.py")],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    assert done.returncode == 0, f"widget tests under ipywidgets {version}: {summary}\n{done.stdout[-3000:]}"
    assert " passed" in summary and "failed" not in summary
