"""What every notebook needs before the first lesson: the setup cell, the device choice, plot output.

What it does:
- `SETUP_CELL` is the one short first code cell of every notebook (`scripts/sync_notebooks.py`
  writes it; `tests/test_notebooks.py` checks it). On Colab it fetches the course and installs only
  the packages Colab lacks (never torch); locally it only makes the package importable and calls
  `setup_plotly()`.
- `fast_mode()` tells notebooks to shorten their loops (CI, `KEDIT_FAST=1`); every code path
  still runs, only on fewer cases and steps.
- `pick_preset()` chooses the model for this machine, `colab_badge()` links a notebook to Colab,
  `package_version()` reports an installed package's version (`info`, the benchmark grid's record).
- `slide_type()` makes every notebook a slide deck for RISE (seminar mode): the title and each
  numbered section ("## ") open a slide, a "### " part a sub-slide. The setup cell stays on the
  title slide, so a presenter can run the deck from its first slide.

What it does not do: load models (see `models.py`) or draw anything (see `viz.py`).
"""
from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError, version

REPO = "kedit-teach/kedit_teach"  # the GitHub path, used by the Colab badges and the setup cell
BRANCH = "main"
COLAB_DIR = "/content/kedit_teach"

SETUP_CELL = f"""\
# Setup: the same first cell in every notebook. On Colab it fetches the course and installs only
# what Colab lacks (never torch); locally it only makes `kedit_teach` importable.
import importlib.util, os, sys
if "google.colab" in sys.modules:
    if not os.path.isdir("{COLAB_DIR}"):
        !git clone -q --depth 1 https://github.com/{REPO} {COLAB_DIR}
        !pip install -q -r {COLAB_DIR}/requirements.txt
    sys.path.insert(0, "{COLAB_DIR}")
elif importlib.util.find_spec("kedit_teach") is None:
    sys.path.insert(0, os.path.abspath(".."))  # a checkout: notebooks/ sits next to the package
from kedit_teach.course import fast_mode, pick_preset, setup_plotly
setup_plotly()"""


# RISE reads this from the notebook's metadata. Sections are longer than a screen, so slides scroll.
RISE_SETTINGS = {"scroll": True, "enable_chalkboard": False, "transition": "none"}


def slide_type(cell, index: int) -> str:
    """The RISE slide type of notebooks' cell `index` (`cell.metadata.slideshow.slide_type`)."""
    if index == 0:
        return "slide"
    first = cell.source.lstrip().split("\n", 1)[0] if cell.cell_type == "markdown" else ""
    if first.startswith("## "):
        return "slide"
    return "subslide" if first.startswith("### ") else "-"


def in_colab() -> bool:
    return "google.colab" in sys.modules


def fast_mode() -> bool:
    """True under CI or KEDIT_FAST=1: notebooks run every cell on fewer cases and steps."""
    return (os.environ.get("KEDIT_FAST", "").strip().lower() in ("1", "true", "yes")
            or os.environ.get("CI", "").strip().lower() == "true")


def setup_plotly() -> None:
    """Pick a plotly renderer that works offline and in saved notebooks.

    "notebook" embeds plotly.js in the output itself, so figures survive without a CDN;
    "plotly_mimetype" draws them in JupyterLab and VS Code.
    """
    import plotly.io as pio
    pio.renderers.default = "colab" if in_colab() else "plotly_mimetype+notebook"


def pick_preset() -> tuple[str, str | None]:
    """(preset, quantization) for this machine, in `load_model(*PRESET)` order."""
    import torch

    from .models import DEFAULT_GPU_MODEL, DEFAULT_MODEL
    return (DEFAULT_GPU_MODEL, "4bit") if torch.cuda.is_available() else (DEFAULT_MODEL, None)


def colab_url(notebook: str) -> str:
    return f"https://colab.research.google.com/github/{REPO}/blob/{BRANCH}/notebooks/{notebook}"


def colab_badge(notebook: str) -> str:
    """Markdown for the "Open in Colab" badge of notebooks/<notebook>."""
    return ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"({colab_url(notebook)})")


def package_version(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"
