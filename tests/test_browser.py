"""A real-browser smoke test: JupyterLab on loopback, notebook 01 in headless Chromium.

nbconvert never clicks a button, so this opens the notebook as a student does: run all cells,
type a new edit into the playground, click "Add edit", and check that the table and the chart
changed. The screenshot is kept in artifacts/ for a person to look at.

It installs what it needs: Debian's chromium (Playwright's own browser download does not work
here) when running as root, and Playwright's Python driver comes from requirements-dev.txt.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

# This test found that a go.Figure handed to Output.append_display_data renders as nothing in
# JupyterLab (widgets.figure_mimebundle explains why); it guards that fix.
pytestmark = pytest.mark.real
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = "/usr/bin/chromium"
TOKEN = "kedit-smoke"


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
    """A JupyterLab server on 127.0.0.1 serving the repo, stopped after the test."""
    _ensure_chromium()
    port = _free_port()
    # Serve a copy: JupyterLab autosaves, and the repo's notebooks must stay output-free.
    root = tmp_path_factory.mktemp("course")
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    (root / "kedit_teach").symlink_to(ROOT / "kedit_teach")
    # one torch thread: a kernel that shares the cores with anything else slows down 10x with two
    env = {**os.environ, "KEDIT_FAST": "1", "OMP_NUM_THREADS": "1",
           "JUPYTER_CONFIG_DIR": str(tmp_path_factory.mktemp("jupyter"))}
    log = open(tmp_path_factory.mktemp("lablog") / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}", "--allow-root",
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
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_notebook_01_add_edit_updates_chart_and_table(lab):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{lab}/lab/tree/notebooks/01_task_formulation.ipynb?token={TOKEN}")
            page.wait_for_selector(".jp-Notebook", timeout=120_000)
            page.wait_for_timeout(5_000)  # let the kernel session attach before asking it to run
            page.locator(".jp-Cell").nth(1).click()
            page.keyboard.press("Escape")
            page.keyboard.press("Control+Shift+c")  # the command palette: sturdier than menu clicks
            page.keyboard.type("Run All Cells")
            page.wait_for_timeout(1_000)
            page.keyboard.press("Enter")

            message = page.locator(".widget-html", has_text="done in").first
            expect(message).to_be_visible(timeout=400_000)  # the notebook's own click finished
            panel = page.locator(".widget-vbox", has=page.locator("button", has_text="Add edit")).first
            panel.scroll_into_view_if_needed()
            page.wait_for_timeout(3_000)  # let plotly.js draw
            panel.screenshot(path=str(ARTIFACTS / "browser_playground_before.png"))
            charts_before = panel.locator(".js-plotly-plot").count()
            assert charts_before >= 1, "the playground shows no plotly chart after the notebook's click"

            def box(label: str):
                return panel.locator(".widget-text", has=page.locator("label", has_text=label)).locator("input")

            box("edit prompt x*").fill("The Statue of Liberty is located in the city of")
            box("new target y*").fill("Sydney")
            box("a rephrasing").fill("The Statue of Liberty stands in the city of")
            panel.locator("button", has_text="Add edit").click()
            expect(panel.locator(".widget-html", has_text="playground-2 done")).to_be_visible(timeout=300_000)
            expect(panel.locator("table", has_text="Statue of Liberty")).to_be_visible(timeout=30_000)
            chart = panel.locator(".js-plotly-plot").first
            expect(chart).to_contain_text("Statue of Liberty", timeout=30_000)  # the chart's title
            panel.screenshot(path=str(ARTIFACTS / "browser_playground.png"))
            chart.scroll_into_view_if_needed()  # the table pushes the chart below the viewport
            chart.screenshot(path=str(ARTIFACTS / "browser_playground_chart.png"))
            page.screenshot(path=str(ARTIFACTS / "browser_notebook01.png"), full_page=False)
        finally:
            browser.close()
