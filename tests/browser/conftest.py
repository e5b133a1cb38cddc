"""Fixtures for the browser tests: one headless Debian Chromium per session (the server: tests/conftest.py).

Chromium comes from apt (scripts/install_browser.sh, run by scripts/test.sh); `playwright install` is never
used because it downloads a browser from the internet. A missing browser fails the tests, it never skips them.
"""
from __future__ import annotations

import os
import pathlib
import time

import pytest

from scripts.comfy_server import ROOT, ComfyServer

CHROMIUM = pathlib.Path(os.environ.get("FLOWSCOPE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts"
EXTENSION_NAME = "FlowScope.Charts"
EXTENSION_URL = "/extensions/ComfyUI-FlowScope/js/flowscope_charts.js"
# Console lines the stock frontend prints on this offline machine (see HARNESS.md); anything else is a finding.
HARMLESS_CONSOLE = ("user.css", "userdata", "api.comfy.org", "Content Security Policy", "reading 'id'",
                    "Failed to load resource")


def _require_chromium() -> pathlib.Path:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/test.sh (it installs Debian's chromium through "
                    "scripts/install_browser.sh) or run scripts/install_browser.sh yourself", pytrace=False)
    return CHROMIUM


@pytest.fixture(scope="session")
def chromium_path():
    return _require_chromium()


@pytest.fixture(scope="session")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium_path), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class EditorPage:
    """The ComfyUI graph editor in one browser page, with the console errors it logged."""

    def __init__(self, page, comfy: ComfyServer):
        self.page = page
        self.comfy = comfy
        self.errors: list[str] = []  # console errors and uncaught exceptions, in order
        self.mark = 0
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def start_test(self):
        """Empty graph, view at 100 %, and only errors from here on count as findings."""
        self.page.evaluate("app.graph.clear(); app.canvas.ds.scale = 1; app.canvas.ds.offset = [0, 0]")
        self.page.mouse.move(2, 2)
        self.mark = len(self.errors)

    def findings(self) -> list[str]:
        """Console errors and uncaught exceptions since start_test() that are not the known harmless noise."""
        return [line for line in self.errors[self.mark:] if not any(h in line for h in HARMLESS_CONSOLE)]

    def screenshot(self, name: str) -> pathlib.Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path))
        return path


def open_editor(browser, comfy: ComfyServer, vue_nodes: bool) -> EditorPage:
    """Open the editor with the given renderer ("Nodes 2.0" Vue nodes or the classic LiteGraph canvas)."""
    settings = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "Comfy.VueNodes.Enabled": vue_nodes}
    status, body = comfy.post("/settings", settings)
    assert status == 200, f"POST /settings answered {status}: {body}"
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.route("**/*", lambda route: route.continue_()
                  if route.request.url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:"))
                  else route.abort())
    editor = EditorPage(context.new_page(), comfy)
    started = time.time()
    editor.page.goto(comfy.url + "/")
    editor.page.wait_for_function("window.app && window.app.graph", timeout=60_000)
    editor.ready_s = time.time() - started
    names = editor.page.evaluate("app.extensions.map(e => e.name)")
    assert EXTENSION_NAME in names, (
        f"{EXTENSION_NAME} is not among the registered extensions ({len(names)}): {EXTENSION_URL} did not load "
        f"or threw on import; console: {editor.errors}")
    enabled = editor.page.evaluate("app.ui.settings.getSettingValue('Comfy.VueNodes.Enabled')")
    assert bool(enabled) == vue_nodes, f"Comfy.VueNodes.Enabled is {enabled!r}, the test asked for {vue_nodes}"
    return editor


RENDERERS = {"classic": False, "vue-nodes": True}


@pytest.fixture(scope="module", params=list(RENDERERS))
def renderer_page(request, browser, comfy):
    """One page per renderer, shared by the tests of a module (pytest groups the tests by renderer)."""
    editor = open_editor(browser, comfy, vue_nodes=RENDERERS[request.param])
    editor.renderer = request.param
    yield editor
    editor.page.context.close()


@pytest.fixture
def editor(renderer_page):
    renderer_page.start_test()
    return renderer_page
