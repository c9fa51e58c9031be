"""Real-browser tests: JupyterLab on loopback, notebooks 01, 05 and 06 in headless Chromium.

nbclient never clicks a button, so these open notebooks as a student does (fast mode, Run All)
and then use the panels by hand:
- 01: type a new edit into the playground, click "Add edit": the table and the chart change; then
  the notebook presents as slides (seminar mode, RISE), one section a slide, the panel live on it;
- 05: the RECIPE panel's Add and Ask after Run All, its list matching the editor;
- 06: the arena runs one edit with three methods and shows which method is running.
Every run must end with no error and no stderr output (the red boxes a student reads as errors).
Screenshots are kept in artifacts/ for a person to look at.

It installs what it needs: Debian's chromium (Playwright's own browser download does not work
here) when running as root, and Playwright's Python driver comes from requirements-dev.txt.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from .notebook_checks import CHROMIUM, red_outputs

# This test found that a go.Figure handed to Output.append_display_data renders as nothing in
# JupyterLab (widgets.figure_mimebundle explains why); it guards that fix.
pytestmark = pytest.mark.real
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
TOKEN = "kedit-smoke"
RUN_LIMIT_S = 1800  # a hung notebook, not a slow machine (speed lives in scripts/time_notebooks.py)
# JupyterLab settings for a test: every cell in the DOM (no windowing), no news or update popups
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
}


def _cannot(why: str) -> None:
    # CI sets KEDIT_REQUIRE_BROWSER=1: there a missing browser must fail the run, not pass it quietly
    (pytest.fail if os.environ.get("KEDIT_REQUIRE_BROWSER") == "1" else pytest.skip)(why)


def _ensure_chromium() -> None:
    if os.path.exists(CHROMIUM):
        return
    if os.geteuid() != 0:
        _cannot("chromium is missing and installing it needs root: apt-get install chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=180)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env, timeout=900,
                       stdout=subprocess.DEVNULL)
    except (subprocess.SubprocessError, OSError) as e:
        _cannot(f"could not install Debian's chromium ({e}); apt-get install chromium, then rerun")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(url, served root) of a JupyterLab server on 127.0.0.1 serving a copy of the course."""
    port = _free_port()
    # Serve a copy: JupyterLab autosaves, and the repo's notebooks must stay output-free.
    root = tmp_path_factory.mktemp("course")
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    (root / "kedit_teach").symlink_to(ROOT / "kedit_teach")
    settings = tmp_path_factory.mktemp("settings")
    for name, values in LAB_SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))
    # Two torch threads that sleep when idle: with OpenMP's default spinning, a kernel sharing the
    # cores with chromium slowed down 10x with two threads
    env = {**os.environ, "KEDIT_FAST": "1", "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE",
           "JUPYTER_CONFIG_DIR": str(tmp_path_factory.mktemp("jupyter"))}
    log = open(tmp_path_factory.mktemp("lablog") / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}", "--allow-root",
         f"--LabApp.user_settings_dir={settings}",
         f"--LabApp.workspaces_dir={tmp_path_factory.mktemp('workspaces')}"],  # no restored tabs
        env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):  # bounded wait for the server to answer
            try:
                urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start within 60 s")
        yield url, root
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    _ensure_chromium()  # before the launch: on a fresh machine the browser is not there yet
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            yield browser
        finally:
            browser.close()


def run_command(page, label: str) -> None:
    """Run a JupyterLab command by its label from the command palette: sturdier than menu clicks,
    and than shortcuts, which depend on where the focus is."""
    page.keyboard.press("Control+Shift+c")
    # typed before the palette is open, the label would be command-mode keys ("a" adds a cell)
    palette = page.locator(".lm-CommandPalette-input")
    palette.wait_for(state="visible", timeout=60_000)
    palette.fill(label)
    page.wait_for_timeout(1_000)
    palette.press("Enter")


def shut_down_kernels(url: str) -> None:
    """End every kernel the server runs: an earlier test's kernel, model loaded, takes memory and
    cores from the next notebook (in CI, notebook 06's test took 384 s with 01's and 05's kernels
    still running, 308 s with them shut down)."""
    with urllib.request.urlopen(f"{url}/api/sessions?token={TOKEN}", timeout=30) as r:
        sessions = json.load(r)
    for s in sessions:
        request = urllib.request.Request(f"{url}/api/sessions/{s['id']}?token={TOKEN}", method="DELETE")
        urllib.request.urlopen(request, timeout=60).close()


def open_and_run_all(browser, lab, name: str):
    """(page, the saved notebook) after Run All on notebooks/<name> finished or failed."""
    url, root = lab
    shut_down_kernels(url)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    # a workspace of its own, reset: one test's open tabs must not be another's active notebook
    page.goto(f"{url}/lab/workspaces/{Path(name).stem}/tree/notebooks/{name}?reset&token={TOKEN}")
    page.wait_for_selector(".jp-Notebook", timeout=120_000)
    page.wait_for_timeout(5_000)  # let the kernel session attach before asking it to run
    page.locator(".jp-Cell").nth(1).click()
    page.keyboard.press("Escape")
    run_command(page, "Run All Cells")
    # Done when the saved file has every code cell executed, or an error. The DOM's prompts are not
    # a sturdy signal; the file JupyterLab writes is.
    deadline = time.monotonic() + RUN_LIMIT_S
    while time.monotonic() < deadline:
        page.wait_for_timeout(10_000)
        page.keyboard.press("Control+s")
        page.wait_for_timeout(1_000)
        try:
            nb = nbformat.read(root / "notebooks" / name, as_version=4)
        except nbformat.reader.NotJSONError:  # read while JupyterLab was writing it: read it next round
            continue
        code = [c for c in nb.cells if c.cell_type == "code"]
        failed = any(o.output_type == "error" for c in code for o in c.outputs)
        if failed or all(c.execution_count is not None for c in code):
            return page, nb
    pytest.fail(f"{name}: Run All did not finish in {RUN_LIMIT_S} s")


def assert_clean(nb, name: str) -> None:
    """No error and nothing on stderr: a red box a student reads as an error."""
    red = red_outputs(nb)
    assert not red, f"{name}: errors or stderr in cells {red}"


def text_box(panel, label: str):
    return panel.locator(".widget-text", has=panel.page.locator("label", has_text=label)).locator("input")


def test_notebook_01_playground_and_slides(chromium, lab):
    from playwright.sync_api import expect

    page, nb = open_and_run_all(chromium, lab, "01_task_formulation.ipynb")
    assert_clean(nb, "01")
    panel = page.locator(".widget-vbox", has=page.locator("button", has_text="Add edit")).first
    panel.scroll_into_view_if_needed()
    page.wait_for_timeout(3_000)  # let plotly.js draw
    panel.screenshot(path=str(ARTIFACTS / "browser_playground_before.png"))
    assert panel.locator(".js-plotly-plot").count() >= 1, "the playground shows no plotly chart after the notebook's click"

    text_box(panel, "edit prompt x*").fill("The Statue of Liberty is located in the city of")
    text_box(panel, "new target y*").fill("Sydney")
    text_box(panel, "a rephrasing").fill("The Statue of Liberty stands in the city of")
    panel.locator("button", has_text="Add edit").click()
    expect(panel.locator(".widget-html", has_text="playground-2 done")).to_be_visible(timeout=300_000)
    expect(panel.locator("table", has_text="Statue of Liberty")).to_be_visible(timeout=30_000)
    chart = panel.locator(".js-plotly-plot").first
    expect(chart).to_contain_text("Statue of Liberty", timeout=30_000)  # the chart's title
    panel.screenshot(path=str(ARTIFACTS / "browser_playground.png"))
    chart.scroll_into_view_if_needed()  # the table pushes the chart below the viewport
    chart.screenshot(path=str(ARTIFACTS / "browser_playground_chart.png"))

    # Seminar mode: RISE renders the same notebook as slides beside it, on the same kernel.
    page.keyboard.press("Control+s")
    page.locator(".jp-Cell").nth(1).click()  # not the title cell: its Colab badge is a link
    page.keyboard.press("Escape")
    run_command(page, "Render as Reveal Slideshow")  # Alt+R, as a presenter presses it
    for _ in range(120):  # the preview's frame appears once RISE has loaded the notebook
        frame = next((f for f in page.frames if "/rise/" in f.url), None)
        if frame is not None:
            break
        page.wait_for_timeout(1_000)
    else:
        pytest.fail("RISE opened no slides within 120 s")
    sections = [c for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## ")]
    expect(frame.locator(".reveal .slides > section")).to_have_count(1 + len(sections), timeout=120_000)
    playground = 1 + next(i for i, c in enumerate(sections) if "playground" in c.source.splitlines()[0].lower())
    for _ in range(60):  # reveal.js ignores a slide asked for before it has set up: ask until it shows it
        frame.evaluate(f"window.location.hash = '#/slide-{playground}-0'")
        page.wait_for_timeout(2_000)
        if "playground" in frame.locator(".reveal .slides > section.present").first.inner_text()[:200].lower():
            break
    live = frame.locator(".reveal .present .widget-vbox button", has_text="Add edit")
    expect(live.first).to_be_visible(timeout=120_000)  # the panel's widgets render live on the slide
    page.wait_for_timeout(3_000)
    page.screenshot(path=str(ARTIFACTS / "browser_slides.png"))
    page.close()


def stored_count(text: str) -> int:
    """The edit count a panel's stored line or message states ("nothing stored", "1 edit stored")."""
    found = re.search(r"(\d+) edits? stored", text)
    assert found or "nothing stored" in text, text
    return int(found.group(1)) if found else 0


def test_notebook_05_recipe_panel_after_run_all(chromium, lab):
    from playwright.sync_api import expect

    page, nb = open_and_run_all(chromium, lab, "05_recipe_sentinel_retrieval.ipynb")
    assert_clean(nb, "05")
    panel = page.locator(".widget-vbox", has=page.locator("button", has_text="Ask")).first
    panel.scroll_into_view_if_needed()
    stored = panel.locator(".widget-html", has_text="stored").first
    before = stored_count(stored.inner_text())  # later cells used the same editor: whatever they left
    text_box(panel, "edit prompt x*").fill("The Statue of Liberty is located in the city of")
    text_box(panel, "subject").fill("Statue of Liberty")
    text_box(panel, "new target y*").fill("Sydney")
    text_box(panel, "new target y*").press("Enter")  # Enter adds, as the button does
    message = panel.locator(".widget-html", has_text="No weights changed")
    expect(message).to_be_visible(timeout=120_000)
    # the panel's list and its message both read the editor: one more edit than before, in both
    assert stored_count(message.inner_text()) == stored_count(stored.inner_text()) == before + 1
    if before < 5:  # the list names the first five
        expect(stored).to_contain_text("Statue of Liberty")
    text_box(panel, "query").fill("Where is the Statue of Liberty? It is in the city of")
    panel.locator("button", has_text="Ask").click()
    expect(panel.locator(".widget-html", has_text="the model received")).to_contain_text("Statue of Liberty",
                                                                                        timeout=120_000)
    page.wait_for_timeout(3_000)  # let plotly.js draw
    panel.screenshot(path=str(ARTIFACTS / "browser_recipe_panel.png"))
    page.close()


def test_notebook_06_arena_shows_each_method_as_it_runs(chromium, lab):
    from playwright.sync_api import expect

    page, nb = open_and_run_all(chromium, lab, "06_lifelong_benchmark.ipynb")
    assert_clean(nb, "06")
    chart = page.locator(".js-plotly-plot").first
    chart.scroll_into_view_if_needed()
    page.wait_for_timeout(3_000)
    chart.screenshot(path=str(ARTIFACTS / "browser_grid_chart.png"))

    arena = page.locator(".widget-vbox", has=page.locator("button", has_text="Edit with every method")).first
    arena.scroll_into_view_if_needed()
    methods = arena.locator("select option:checked").count()
    assert methods >= 3, f"the arena runs {methods} methods in fast mode; this test needs three"
    text_box(arena, "new target").fill("Sydney")
    arena.locator("button", has_text="Edit with every method").click()
    # which method is running, n of m, while it runs; then all of them done, one row each
    expect(arena.locator(".widget-html", has_text=re.compile(rf"\(\d of {methods}"))).to_be_visible(timeout=60_000)
    expect(arena.locator(".widget-html", has_text=f"{methods} methods done")).to_be_visible(timeout=600_000)
    rows = arena.locator("table tbody tr")
    expect(rows).to_have_count(methods)
    expect(arena.locator("table")).to_contain_text("Sydney")
    arena.screenshot(path=str(ARTIFACTS / "browser_arena.png"))
    page.close()
