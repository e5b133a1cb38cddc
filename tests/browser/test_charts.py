"""The FlowScope chart extension (web/js/flowscope_charts.js) in the real graph editor, in both renderers.

Each test runs twice: the classic LiteGraph canvas and the Vue "Nodes 2.0" renderer (Comfy.VueNodes.Enabled).
What is measured comes from the page itself: the chart element's dataset (points and series drawn), the
pixels of its <canvas>, and the console.
"""
from __future__ import annotations

import json
import math

import pytest

from scripts.comfy_server import ROOT

pytestmark = pytest.mark.browser

WORKFLOW = ROOT / "example_workflows" / "flowscope_flow_vs_diffusion.json"
PLOT_NODE = "FlowScopeVelocityNormPlot"

# Reads back one chart element: its dataset and, per panel, how many canvas pixels are strongly coloured
# (series colours are saturated; background, grid and text are grey) and a hash of all pixels.
READ_CHART = """(element) => {
    const panels = [...element.querySelectorAll('.flowscope-chart-panel')].map((panel) => {
        const canvas = panel.querySelector('canvas');
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let coloured = 0, nonBackground = 0, hash = 0;
        for (let i = 0; i < data.length; i += 4) {
            const r = data[i], g = data[i + 1], b = data[i + 2];
            if (Math.max(r, g, b) - Math.min(r, g, b) > 60) coloured++;
            if (Math.abs(r - 0x1b) + Math.abs(g - 0x1d) + Math.abs(b - 0x21) > 30) nonBackground++;
            hash = (hash * 31 + r * 7 + g * 3 + b) >>> 0;
        }
        const rect = canvas.getBoundingClientRect();
        return {width: canvas.width, height: canvas.height, coloured, nonBackground, hash,
                yLog: panel.dataset.flowscopeYLog, points: Number(panel.dataset.flowscopePoints),
                rect: {x: rect.x, y: rect.y, width: rect.width, height: rect.height},
                caption: panel.querySelector('div:last-child').innerText};
    });
    const rect = element.getBoundingClientRect();
    return {drawn: element.dataset.flowscopeDrawn, points: Number(element.dataset.flowscopePoints),
            series: Number(element.dataset.flowscopeSeries), error: element.dataset.flowscopeError,
            text: element.innerText, panels, visible: rect.width > 0 && rect.height > 0,
            connected: element.isConnected};
}"""

# Adds a core node in view and hands it a synthetic execution output, as the app does on "executed".
SHOW_SYNTHETIC = """([output, pos]) => {
    const node = LiteGraph.createNode('EmptyLatentImage');
    node.pos = pos;
    app.graph.add(node);
    app.canvas.ds.offset = [0, 0];
    app.canvas.ds.scale = 1;
    node.onExecuted(output);
    app.graph.setDirtyCanvas(true, true);
    window.__flowscopeTestNode = node;
    return node.id;
}"""

CHART_ELEMENT_OF = """(id) => {
    const node = app.graph.getNodeById(id);
    const widget = node && node.widgets && node.widgets.find((w) => w.name === 'flowscope_chart');
    return widget ? widget.element : null;
}"""


def chart_element(editor, node_id, timeout_ms=30_000):
    editor.page.wait_for_function(
        f"""(id) => {{ const e = ({CHART_ELEMENT_OF})(id);
            return e && e.isConnected && e.dataset.flowscopeDrawn === '1'; }}""", arg=node_id, timeout=timeout_ms)
    return editor.page.evaluate_handle(CHART_ELEMENT_OF, node_id)


def frame_node(editor, node_id):
    """Zoom to 100 % and centre the view on a node, for a readable screenshot."""
    editor.page.evaluate("""(id) => {
        const node = app.graph.getNodeById(id);
        app.canvas.ds.scale = 1;
        app.canvas.centerOnNode(node);
        app.graph.setDirtyCanvas(true, true);
    }""", node_id)
    editor.page.wait_for_timeout(300)


def read_chart(editor, handle):
    return editor.page.evaluate(READ_CHART, handle)


def expected_points(payload: dict, y_log: bool | None = None) -> int:
    """Finite points of a payload that the chart can draw (a value <= 0 cannot go on a log axis)."""
    y_log = payload.get("y_log", False) if y_log is None else y_log
    x_log = payload.get("x_log", False)

    def drawable(v, log):
        return isinstance(v, (int, float)) and math.isfinite(v) and (not log or v > 0)

    return sum(1 for s in payload["series"] for x, y in zip(s["x"], s["y"]) if drawable(x, x_log)
               and drawable(y, y_log))


SYNTHETIC = {
    "title": "velocity norm (synthetic)", "x_label": "sigma", "y_label": "|v|", "x_log": False, "y_log": False,
    "x_reversed": True, "parameterization": "flow matching (x = (1 - sigma) x0 + sigma noise)",
    "series": [
        {"name": "euler", "x": [1.0, 0.75, 0.5, 0.25, 0.0], "y": [2.0, 1.5, None, 0.8, 0.5], "style": "line"},
        {"name": "heun", "x": [1.0, 0.5, 0.0], "y": [1.9, 1.1, 0.0], "style": "points"},
        {"name": "error", "x": [1.0, 0.5], "y": [0.01, 0.002], "style": "bars"},
    ],
    "notes": ["first note", "second note"],
}


def test_synthetic_payload_draws_toggles_log_and_hovers(editor):
    node_id = editor.page.evaluate(SHOW_SYNTHETIC, [{"flowscope_chart": [SYNTHETIC]}, [120, 120]])
    handle = chart_element(editor, node_id)
    chart = read_chart(editor, handle)
    editor.screenshot(f"synthetic-{editor.renderer}.png")
    assert chart["visible"], chart
    assert chart["error"] == "", chart
    assert chart["series"] == 3
    assert chart["points"] == expected_points(SYNTHETIC) == 9  # the None is skipped
    panel = chart["panels"][0]
    assert panel["coloured"] > 300, f"the series left almost no coloured pixels: {panel}"
    assert "flow matching" in panel["caption"] and "second note" in panel["caption"], panel["caption"]

    # Log y: heun's 0.0 cannot be drawn any more, and the picture changes.
    editor.page.evaluate("(e) => e.querySelector('input.flowscope-ylog').click()", handle)
    logged = read_chart(editor, handle)
    assert logged["panels"][0]["yLog"] == "1"
    assert logged["points"] == expected_points(SYNTHETIC, y_log=True) == 8
    assert logged["panels"][0]["hash"] != panel["hash"], "toggling log y did not change the drawing"
    editor.screenshot(f"synthetic-logy-{editor.renderer}.png")

    # Hover: a pointer over the plot draws the read-out box (more pixels differ from the background).
    rect = logged["panels"][0]["rect"]
    editor.page.mouse.move(rect["x"] + rect["width"] * 0.5, rect["y"] + rect["height"] * 0.5)
    editor.page.wait_for_timeout(100)
    hovered = read_chart(editor, handle)
    assert hovered["panels"][0]["hash"] != logged["panels"][0]["hash"], "moving the pointer drew no read-out"
    editor.screenshot(f"synthetic-hover-{editor.renderer}.png")
    assert editor.findings() == [], editor.findings()


MALFORMED = [
    ("not a list", {"flowscope_chart": "oops"}),
    ("empty list", {"flowscope_chart": []}),
    ("no series", {"flowscope_chart": [{"title": "t"}]}),
    ("series not arrays", {"flowscope_chart": [{"series": [{"name": "a", "x": 3, "y": "b"}]}]}),
    ("all values null", {"flowscope_chart": [{"series": [{"name": "a", "x": [1, 2], "y": [None, None]}]}]}),
    ("null payload", {"flowscope_chart": [None]}),
    ("log axis without positive values", {"flowscope_chart": [{"y_log": True, "series": [{"x": [0, 1], "y": [0, -1]}]}]}),
]


def test_malformed_payloads_show_a_message_and_throw_nothing(editor):
    for index, (what, output) in enumerate(MALFORMED):
        node_id = editor.page.evaluate(SHOW_SYNTHETIC, [output, [80 + 360 * (index % 4), 40 + 420 * (index // 4)]])
        chart = read_chart(editor, chart_element(editor, node_id))
        assert "FlowScope: no data" in chart["text"], (what, chart)
        assert chart["points"] == 0 and chart["error"], (what, chart)
    editor.screenshot(f"malformed-{editor.renderer}.png")
    assert editor.findings() == [], editor.findings()


def test_real_workflow_chart_matches_history(editor):
    comfy = editor.comfy
    assert WORKFLOW.is_file(), f"{WORKFLOW.relative_to(ROOT)} is missing"
    assert PLOT_NODE in comfy.get(f"/object_info/{PLOT_NODE}"), f"{PLOT_NODE} is not registered"
    workflow = json.loads(WORKFLOW.read_text())
    plot_ids = [node["id"] for node in workflow["nodes"] if node["type"] == PLOT_NODE]
    assert plot_ids, f"{WORKFLOW.name} has no {PLOT_NODE} node"

    editor.page.evaluate("""async (workflow) => {
        window.__flowscopeExecuted = [];
        const { api } = await import('/scripts/api.js');
        api.addEventListener('executed', ({ detail }) => window.__flowscopeExecuted.push(detail));
        await app.loadGraphData(workflow);
        await app.queuePrompt(0, 1);
    }""", workflow)
    editor.page.wait_for_function(
        "(ids) => ids.every((id) => window.__flowscopeExecuted.some((d) => String(d.display_node || d.node) === String(id)))",
        arg=plot_ids, timeout=240_000)
    executed = editor.page.evaluate("window.__flowscopeExecuted")
    prompt_id = executed[0]["prompt_id"]
    history = comfy.wait(prompt_id)
    assert history["status"].get("status_str") == "success", history["status"]

    for plot_id in plot_ids:
        payloads = history["outputs"][str(plot_id)]["flowscope_chart"]
        handle = chart_element(editor, plot_id)
        frame_node(editor, plot_id)
        chart = read_chart(editor, handle)
        editor.screenshot(f"velocity-norm-{editor.renderer}-node{plot_id}.png")
        want_points = sum(expected_points(p) for p in payloads)
        want_series = sum(len(p["series"]) for p in payloads)
        print(f"[{editor.renderer}] node {plot_id}: {chart['points']} points / {want_points} expected, "
              f"{chart['series']} series / {want_series}, coloured pixels "
              f"{[p['coloured'] for p in chart['panels']]}")
        assert chart["error"] == "", chart
        assert want_points > 0
        assert chart["points"] == want_points
        assert chart["series"] == want_series
        assert all(p["coloured"] > 300 for p in chart["panels"]), chart["panels"]
        assert payloads[0]["parameterization"] in chart["panels"][0]["caption"]
    assert editor.findings() == [], editor.findings()
