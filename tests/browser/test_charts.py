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
        let coloured = 0, hash = 0;
        for (let i = 0; i < data.length; i += 4) {
            const r = data[i], g = data[i + 1], b = data[i + 2];
            if (Math.max(r, g, b) - Math.min(r, g, b) > 60) coloured++;
            hash = (hash * 31 + r * 7 + g * 3 + b) >>> 0;
        }
        const rect = canvas.getBoundingClientRect();
        return {width: canvas.width, height: canvas.height, coloured, hash,
                yLog: panel.dataset.flowscopeYLog, points: Number(panel.dataset.flowscopePoints),
                hover: panel.dataset.flowscopeHover ? JSON.parse(panel.dataset.flowscopeHover) : null,
                plot: panel.dataset.flowscopePlot ? JSON.parse(panel.dataset.flowscopePlot) : null,
                cssWidth: canvas.clientWidth,
                rect: {x: rect.x, y: rect.y, width: rect.width, height: rect.height},
                caption: panel.querySelector('.flowscope-caption').innerText};
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
    node_id = editor.page.evaluate(SHOW_SYNTHETIC, [{"flowscope_chart": [SYNTHETIC]}, [320, 160]])
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

    # Hover: the read-out shows the nearest point; x_reversed puts sigma = 1 on the left, 0 on the right.
    rect, plot = logged["panels"][0]["rect"], logged["panels"][0]["plot"]
    zoom = rect["width"] / logged["panels"][0]["cssWidth"]  # the classic renderer scales DOM widgets
    hovered = {}
    for where, px in (("left", plot["left"] + 3), ("right", plot["right"] - 3)):
        editor.page.mouse.move(rect["x"] + px * zoom, rect["y"] + (plot["top"] + plot["bottom"]) / 2 * zoom)
        editor.page.wait_for_timeout(100)
        hovered[where] = read_chart(editor, handle)["panels"][0]
        assert hovered[where]["hash"] != logged["panels"][0]["hash"], f"hovering {where} drew no read-out"
        editor.screenshot(f"synthetic-hover-{where}-{editor.renderer}.png")
    assert hovered["left"]["hover"]["x"] == 1.0, hovered["left"]["hover"]
    assert hovered["right"]["hover"]["x"] == 0.0 and hovered["right"]["hover"]["series"] == "euler", hovered["right"]["hover"]
    editor.page.mouse.move(5, 500)  # leaving the canvas removes the read-out
    editor.page.wait_for_timeout(100)
    assert read_chart(editor, handle)["panels"][0]["hover"] is None

    # A second execution output replaces the chart in the same widget.
    editor.page.evaluate("""(payload) => window.__flowscopeTestNode.onExecuted({flowscope_chart: [payload, payload]})""",
                         SYNTHETIC)
    editor.page.wait_for_function(
        "(e) => e.dataset.flowscopeDrawn === '1' && e.querySelectorAll('.flowscope-chart-panel').length === 2",
        arg=handle)
    twice = read_chart(editor, handle)
    assert twice["points"] == 2 * expected_points(SYNTHETIC) and twice["series"] == 6, twice
    assert editor.page.evaluate(
        "window.__flowscopeTestNode.widgets.filter((w) => w.name === 'flowscope_chart').length") == 1
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


# Where the nodes go, so that one screenshot shows every message (the two with a chart panel are wider).
MALFORMED_POSITIONS = [[80, 100], [440, 100], [800, 100], [1160, 100], [80, 400], [560, 400], [920, 400]]


def test_malformed_payloads_show_a_message_and_throw_nothing(editor):
    for index, (what, output) in enumerate(MALFORMED):
        node_id = editor.page.evaluate(SHOW_SYNTHETIC, [output, MALFORMED_POSITIONS[index]])
        chart = read_chart(editor, chart_element(editor, node_id))
        assert "FlowScope: no data" in chart["text"], (what, chart)
        assert chart["points"] == 0 and chart["error"], (what, chart)
    # The last one has finite values, just none > 0 for log y: switching log y off brings them back.
    handle = chart_element(editor, node_id)
    editor.page.evaluate("(e) => e.querySelector('input.flowscope-ylog').click()", handle)
    chart = read_chart(editor, handle)
    assert chart["points"] == 2 and chart["error"] == "" and "no data" not in chart["text"], chart
    editor.screenshot(f"malformed-{editor.renderer}.png")

    # NaN and ±Infinity (real JS numbers here, as a non-JSON transport could deliver them) are skipped too.
    nan = float("nan")
    payload = {"series": [{"name": "a", "x": [0, 1, 2, 3, 4], "y": [1.0, nan, float("inf"), -float("inf"), 2.0]}]}
    node_id = editor.page.evaluate(SHOW_SYNTHETIC, [{"flowscope_chart": [payload]}, [1160, 400]])
    chart = read_chart(editor, chart_element(editor, node_id))
    assert chart["points"] == 2 and chart["series"] == 1 and chart["error"] == "", chart
    assert editor.findings() == [], editor.findings()


def test_real_workflow_chart_matches_history(editor):
    """Queue the example workflow in the editor; every node whose output carries a chart draws it in-node,
    with exactly the finite points and series of the payload the server recorded in /history."""
    comfy = editor.comfy
    assert WORKFLOW.is_file(), f"{WORKFLOW.relative_to(ROOT)} is missing"
    assert PLOT_NODE in comfy.get(f"/object_info/{PLOT_NODE}"), f"{PLOT_NODE} is not registered"
    workflow = json.loads(WORKFLOW.read_text())
    assert any(node["type"] == PLOT_NODE for node in workflow["nodes"]), f"{WORKFLOW.name} has no {PLOT_NODE}"

    editor.page.evaluate("""async (workflow) => {
        window.__flowscopeEvents = [];
        const { api } = await import('/scripts/api.js');
        for (const type of ['execution_start', 'executed', 'execution_success', 'execution_error']) {
            api.addEventListener(type, ({ detail }) => window.__flowscopeEvents.push({ type, detail }));
        }
        await app.loadGraphData(workflow);
        await app.queuePrompt(0, 1);
    }""", workflow)
    editor.page.wait_for_function(
        "window.__flowscopeEvents.some((e) => e.type === 'execution_success' || e.type === 'execution_error')",
        timeout=240_000)
    events = editor.page.evaluate("window.__flowscopeEvents")
    errors = [e["detail"] for e in events if e["type"] == "execution_error"]
    assert not errors, errors
    prompt_id = next(e["detail"]["prompt_id"] for e in events if e["type"] == "execution_success")
    history = comfy.wait(prompt_id)
    assert history["status"].get("status_str") == "success", history["status"]

    charted = {node_id: output["flowscope_chart"] for node_id, output in history["outputs"].items()
               if "flowscope_chart" in output}
    types = {str(node["id"]): node["type"] for node in workflow["nodes"]}
    assert PLOT_NODE in {types[node_id] for node_id in charted}, (
        f"no {PLOT_NODE} output with flowscope_chart in /history: {sorted(history['outputs'])}")
    for node_id, payloads in sorted(charted.items()):
        handle = chart_element(editor, int(node_id))
        frame_node(editor, int(node_id))
        chart = read_chart(editor, handle)
        editor.screenshot(f"{types[node_id]}-{editor.renderer}-node{node_id}.png")
        want_points = sum(expected_points(p) for p in payloads)
        want_series = sum(len(p["series"]) for p in payloads)
        print(f"[{editor.renderer}] {types[node_id]} #{node_id}: {chart['points']} points drawn / {want_points} "
              f"finite in /history, {chart['series']} series / {want_series}, coloured pixels "
              f"{[p['coloured'] for p in chart['panels']]}")
        assert chart["error"] == "", chart
        assert want_points > 0, payloads
        assert chart["points"] == want_points
        assert chart["series"] == want_series
        assert len(chart["panels"]) == len(payloads)
        assert all(p["coloured"] > 300 for p in chart["panels"]), chart["panels"]
        for panel, payload in zip(chart["panels"], payloads):
            assert payload["parameterization"] in panel["caption"], (payload["parameterization"], panel["caption"])
            assert all(note in panel["caption"] for note in payload["notes"]), (payload["notes"], panel["caption"])
        # The chart widget is display-only: saving the workflow must not add it to the node's widget values.
        saved = editor.page.evaluate("(id) => app.graph.getNodeById(id).serialize().widgets_values", int(node_id))
        loaded = next(node for node in workflow["nodes"] if str(node["id"]) == node_id)["widgets_values"]
        assert saved == loaded, (saved, loaded)
    assert editor.findings() == [], editor.findings()


def test_tick_and_payload_helpers(editor):
    """The exported pure helpers of the module the page loaded (same URL, so the same module instance)."""
    result = editor.page.evaluate("""async () => {
        const m = await import('/extensions/ComfyUI-FlowScope/js/flowscope_charts.js');
        return {
            log: m.logTicks(0.003, 250),
            logNarrow: m.logTicks(0.02, 0.9),
            linear: m.linearTicks(-0.013, 0.061, 5),
            tiny: m.linearTicks(1e17, 1e17 + 32, 5),
            labels: [1e-5, 0.001, 0.5, 12345, 0].map(m.formatNumber),
            elements: [m.payloadElements([{a: 1}]).length, m.payloadElements([[{a: 1}, {b: 2}]]).length,
                       m.payloadElements('x').length],
            noY: m.normalizeChart({series: [{x: [1]}]}).error,
            xDefault: m.normalizeChart({series: [{y: [3, 4]}]}).chart.series[0].x,
        };
    }""")
    assert result["log"] == [0.01, 0.1, 1, 10, 100], result["log"]
    assert result["logNarrow"] == [0.02, 0.05, 0.1, 0.2, 0.5], result["logNarrow"]
    assert result["linear"][0] >= -0.013 and result["linear"][-1] <= 0.061 and 0 in result["linear"], result["linear"]
    assert len(result["tiny"]) == 2, result["tiny"]  # a span below float resolution must not loop
    assert result["labels"] == ["1e-5", "0.001", "0.5", "1.23e4", "0"], result["labels"]
    assert result["elements"] == [1, 2, 0]
    assert result["noY"] == "no series has a y array"
    assert result["xDefault"] == [0, 1]
    assert editor.findings() == [], editor.findings()
