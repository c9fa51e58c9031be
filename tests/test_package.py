"""The package as pip installs it: the wheel carries the course's own data files."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from kedit_teach import alignment, data, general, grid, mend, prompt_learning, scope

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_the_course_data_the_trained_weights_and_the_reference_run(tmp_path):
    # Built from a copy, since setuptools leaves build/ and egg-info behind in the source tree.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "kedit_teach", src / "kedit_teach", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "requirements.txt", "README.md"):
        shutil.copy(ROOT / name, src / name)
    # No build isolation: the build then needs no network (setuptools is already installed).
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("kedit_teach-*.whl")
    shipped = [data.TEACH_PATH, alignment.FREE_TEXT_PATH, data.ASSETS / "README.md",
               *sorted((alignment.SHIPPED_ADAPTERS / "gemma-3-270m").iterdir()),
               *sorted((prompt_learning.SHIPPED / "gemma-3-270m").iterdir()),
               *sorted(scope.SHIPPED.iterdir()),  # SERAC's classifier reads text only: one for every model
               *sorted((mend.SHIPPED / "gemma-3-270m").iterdir()),
               *sorted(general.FOLDER.iterdir()), grid.PAPERS, grid.REFERENCE_RUN,  # notebook 06 renders these
               data.ASSETS / "stats" / "gemma-3-270m" / "model-texts-72.json"]  # layer statistics' default text
    assert len(shipped) == 16
    with zipfile.ZipFile(wheel) as z:
        for path in shipped:
            name = path.relative_to(ROOT).as_posix()
            assert z.read(name) == path.read_bytes(), name
