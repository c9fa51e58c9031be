"""What the notebook tests share: which notebooks the browser test runs, and what counts as a red box."""
from __future__ import annotations

import os

CHROMIUM = "/usr/bin/chromium"
# Run All in a real browser (tests/test_browser.py) also proves these run top to bottom, so the
# nbclient test leaves them to it whenever the browser test will run: CI's time stays in budget.
BROWSER_RUNS = ("01_task_formulation.ipynb", "05_recipe_sentinel_retrieval.ipynb", "06_lifelong_benchmark.ipynb")


def browser_will_run() -> bool:
    """CI requires the browser test; elsewhere it runs wherever Debian's chromium is installed."""
    return os.environ.get("KEDIT_REQUIRE_BROWSER") == "1" or os.path.exists(CHROMIUM)


def red_outputs(nb) -> list[tuple[int, str]]:
    """(cell, text) of every error and stderr output: JupyterLab draws both as a red box."""
    return [(i, o.get("ename") or o.get("text", "")[:300])
            for i, c in enumerate(nb.cells) if c.cell_type == "code" for o in c.outputs
            if o.output_type == "error" or (o.output_type == "stream" and o.name == "stderr")]
