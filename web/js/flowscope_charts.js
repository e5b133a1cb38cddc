// FlowScope in-node charts.
//
// Any node whose execution output (its "ui" dict) carries the key `flowscope_chart` gets a DOM widget with one
// chart per payload element. A payload element is
//   {title, x_label, y_label, x_log, y_log, x_reversed, parameterization,
//    series: [{name, x: [..], y: [..], style: "line" | "points" | "bars"}], notes: [..]}
// The chart code knows nothing about sampling: it only draws the payload. Plain canvas 2D, no libraries.
//
// For tests the widget element exposes:
//   dataset.flowscopeDrawn  = "1" once drawn (also when it shows a "FlowScope: no data…" message)
//   dataset.flowscopePoints = finite points drawn (all charts; a value <= 0 on a log axis is not drawn)
//   dataset.flowscopeSeries = series drawn (all charts)
//   dataset.flowscopeError  = the message shown instead of a chart, "" when every chart drew
// and each chart panel (.flowscope-chart-panel) its own flowscopePoints, flowscopeSeries, flowscopeYLog ("1"/"0")
// flowscopeHover (JSON {series, x, y} of the point the hover read-out shows, "" when none) and flowscopePlot
// (JSON {left, top, right, bottom}: the plot area in canvas CSS pixels).

import { app } from "../../../scripts/app.js";

export const CHART_KEY = "flowscope_chart";
export const WIDGET_NAME = "flowscope_chart";
const EXTENSION_NAME = "FlowScope.Charts";

// Okabe–Ito colours (distinguishable with colour-vision deficiencies), brightened for a dark background.
const PALETTE = ["#56b4e9", "#e69f00", "#009e73", "#f0e442", "#cc79a7", "#d55e00", "#0072b2", "#ffffff"];
const COLORS = {
    background: "#1b1d21",
    plot: "#22252b",
    grid: "rgba(255,255,255,0.08)",
    axis: "#9aa0a6",
    text: "#d7dade",
    muted: "#9aa0a6",
    hover: "rgba(255,255,255,0.55)",
};
const FONT = "11px sans-serif";
const TITLE_FONT = "bold 12px sans-serif";
const CANVAS_MIN_HEIGHT = 220;
const TOOLBAR_HEIGHT = 22;
const CAPTION_LINE_HEIGHT = 15;
const MAX_POINTS_PER_SERIES = 100000;

// ---------------------------------------------------------------------------------------------------------
// Payload validation

function isFiniteNumber(value) {
    return typeof value === "number" && Number.isFinite(value);
}

/** Returns {chart} with a cleaned-up copy of one payload element, or {error} saying what is wrong with it. */
export function normalizeChart(raw) {
    if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
        return { error: "the chart payload is not an object" };
    }
    if (!Array.isArray(raw.series) || raw.series.length === 0) {
        return { error: "the chart has no series" };
    }
    const series = [];
    raw.series.forEach((entry, index) => {
        if (entry === null || typeof entry !== "object" || !Array.isArray(entry.y)) return;
        const y = entry.y.slice(0, MAX_POINTS_PER_SERIES);
        const x = Array.isArray(entry.x) ? entry.x : y.map((_, i) => i);
        const n = Math.min(x.length, y.length);
        const style = ["line", "points", "bars"].includes(entry.style) ? entry.style : "line";
        series.push({
            name: entry.name != null ? String(entry.name) : `series ${index + 1}`,
            x: x.slice(0, n),
            y: y.slice(0, n),
            style,
            color: PALETTE[index % PALETTE.length],
        });
    });
    if (series.length === 0) return { error: "no series has a y array" };
    const text = (value) => (value == null ? "" : String(value));
    return {
        chart: {
            title: text(raw.title),
            xLabel: text(raw.x_label),
            yLabel: text(raw.y_label),
            xLog: raw.x_log === true,
            yLog: raw.y_log === true,
            xReversed: raw.x_reversed === true,
            parameterization: text(raw.parameterization),
            notes: Array.isArray(raw.notes) ? raw.notes.map(text) : (raw.notes ? [text(raw.notes)] : []),
            series,
        },
    };
}

/** The payload elements of a `flowscope_chart` output value (ComfyUI wraps ui values in lists). */
export function payloadElements(value) {
    if (Array.isArray(value)) return value.flat(1);
    if (value && typeof value === "object") return [value];
    return [];
}

// ---------------------------------------------------------------------------------------------------------
// Scales and ticks

function makeScale(log, reversed, domainMin, domainMax, rangeMin, rangeMax) {
    const f = log ? Math.log10 : (v) => v;
    const a = f(domainMin);
    const b = f(domainMax);
    const span = b - a || 1;
    const scale = (v) => {
        const t = (f(v) - a) / span;
        return reversed ? rangeMax - t * (rangeMax - rangeMin) : rangeMin + t * (rangeMax - rangeMin);
    };
    scale.log = log;
    scale.domain = [domainMin, domainMax];
    return scale;
}

function niceStep(span, count) {
    const raw = span / Math.max(count, 1);
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const fraction = raw / power;
    const nice = fraction < 1.5 ? 1 : fraction < 3 ? 2 : fraction < 7 ? 5 : 10;
    return nice * power;
}

export function linearTicks(min, max, count = 5) {
    if (!(max > min)) return [min];
    const step = niceStep(max - min, count);
    const first = Math.ceil(min / step - 1e-9);
    const last = Math.floor(max / step + 1e-9);
    // Below float resolution (e.g. 1e17 … 1e17 + 32) tick indices stop being distinct: plain ends then.
    if (!(last >= first) || last - first > 50 || first + 1 === first) return [min, max];
    const ticks = [];
    for (let k = 0; k <= last - first; k++) ticks.push(first + k === 0 ? 0 : (first + k) * step);
    return ticks;
}

/** Powers of ten inside [min, max] (thinned to at most ~count); with under two decades also 2× and 5×. */
export function logTicks(min, max, count = 6) {
    const lo = Math.floor(Math.log10(min));
    const hi = Math.ceil(Math.log10(max));
    const decades = hi - lo;
    const every = Math.max(1, Math.ceil(decades / count));
    const multipliers = decades <= 2 ? [1, 2, 5] : [1];
    const ticks = [];
    for (let e = lo; e <= hi; e++) {
        if (multipliers.length === 1 && (e - lo) % every !== 0) continue;
        for (const m of multipliers) {
            const v = m * Math.pow(10, e);
            if (v >= min * (1 - 1e-9) && v <= max * (1 + 1e-9)) ticks.push(v);
        }
    }
    if (ticks.length < 2) return linearTicks(min, max, 3).filter((v) => v > 0);
    return ticks;
}

export function formatNumber(v) {
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1e4 || a < 1e-3) {
        const [mantissa, exponent] = v.toExponential(2).split("e");
        return `${parseFloat(mantissa)}e${parseInt(exponent, 10)}`;
    }
    return String(parseFloat(v.toPrecision(4)));
}

/** [min, max] of the values that can be drawn on this axis, padded; null when there is none. */
function extent(values, log, includeZero) {
    let min = Infinity;
    let max = -Infinity;
    for (const v of values) {
        if (v < min) min = v;
        if (v > max) max = v;
    }
    if (!(min <= max)) return null;
    if (log) {
        if (min === max) return [min / 2, max * 2];
        const pad = Math.pow(max / min, 0.04);
        return [min / pad, max * pad];
    }
    if (includeZero) {
        min = Math.min(min, 0);
        max = Math.max(max, 0);
    }
    if (min === max) {
        const d = Math.abs(min) * 0.1 || 1;
        return [min - d, max + d];
    }
    const pad = (max - min) * 0.04;
    return [includeZero && min === 0 ? 0 : min - pad, includeZero && max === 0 ? 0 : max + pad];
}

// ---------------------------------------------------------------------------------------------------------
// Drawing one chart

/** The points of each series that can be drawn with these axis scales (finite, > 0 on a log axis). */
export function drawablePoints(chart, yLog) {
    const ok = (v, log) => isFiniteNumber(v) && (!log || v > 0);
    return chart.series.map((s) => {
        const points = [];
        for (let i = 0; i < s.y.length; i++) {
            if (ok(s.x[i], chart.xLog) && ok(s.y[i], yLog)) points.push([s.x[i], s.y[i]]);
        }
        return points;
    });
}

function wrapLegend(ctx, series, maxWidth) {
    const rows = [[]];
    let width = 0;
    for (const s of series) {
        const w = 18 + ctx.measureText(s.name).width + 14;
        if (width + w > maxWidth && rows[rows.length - 1].length) {
            rows.push([]);
            width = 0;
        }
        rows[rows.length - 1].push({ s, w });
        width += w;
    }
    return rows;
}

/**
 * Draw `chart` on a 2D context of CSS size width × height. Returns what was drawn, including the screen
 * position of every point (for the hover read-out), or an error when there is nothing to draw.
 */
export function drawChart(ctx, chart, width, height, { yLog = chart.yLog, hover = null } = {}) {
    ctx.save();
    ctx.fillStyle = COLORS.background;
    ctx.fillRect(0, 0, width, height);
    ctx.font = FONT;
    ctx.textBaseline = "middle";

    const perSeries = drawablePoints(chart, yLog);
    const total = perSeries.reduce((n, p) => n + p.length, 0);
    const xs = perSeries.flatMap((p) => p.map((q) => q[0]));
    const ys = perSeries.flatMap((p) => p.map((q) => q[1]));
    const hasBars = chart.series.some((s) => s.style === "bars");
    const xExtent = extent(xs, chart.xLog, false);
    const yExtent = extent(ys, yLog, hasBars);
    if (total === 0 || !xExtent || !yExtent) {
        ctx.restore();
        const why = yLog || chart.xLog ? " (no finite positive values for the log axis)" : " (no finite values)";
        return { error: `FlowScope: no data to plot${why}`, points: 0, series: 0, screen: [] };
    }

    // Layout: title, legend rows, plot, x ticks and label; y ticks and label on the left.
    let top = 6;
    if (chart.title) {
        ctx.font = TITLE_FONT;
        ctx.fillStyle = COLORS.text;
        ctx.textAlign = "center";
        ctx.fillText(chart.title, width / 2, top + 7, width - 8);
        top += 18;
        ctx.font = FONT;
    }
    const legendRows = wrapLegend(ctx, chart.series, width - 60);
    const legendTop = top;
    top += legendRows.length * 15 + 4;

    const yTicksPreview = yLog ? logTicks(...yExtent) : linearTicks(...yExtent);
    const tickWidth = Math.max(...yTicksPreview.map((v) => ctx.measureText(formatNumber(v)).width));
    const left = 8 + (chart.yLabel ? 16 : 0) + tickWidth + 6;
    const right = width - 12;
    const bottom = height - (chart.xLabel ? 34 : 20);
    if (right - left < 20 || bottom - top < 20) {
        ctx.restore();
        return { error: "FlowScope: the widget is too small to draw the chart", points: 0, series: 0, screen: [] };
    }
    const sx = makeScale(chart.xLog, chart.xReversed, xExtent[0], xExtent[1], left, right);
    const sy = makeScale(yLog, true, yExtent[0], yExtent[1], top, bottom); // larger y at the top

    ctx.fillStyle = COLORS.plot;
    ctx.fillRect(left, top, right - left, bottom - top);

    // Grid, ticks and tick labels.
    ctx.lineWidth = 1;
    const xTicks = chart.xLog ? logTicks(...xExtent) : linearTicks(...xExtent, Math.max(2, Math.floor((right - left) / 70)));
    const yTicks = yLog ? logTicks(...yExtent) : linearTicks(...yExtent, Math.max(2, Math.floor((bottom - top) / 40)));
    ctx.fillStyle = COLORS.muted;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const v of xTicks) {
        const px = Math.round(sx(v)) + 0.5;
        ctx.strokeStyle = COLORS.grid;
        ctx.beginPath(); ctx.moveTo(px, top); ctx.lineTo(px, bottom); ctx.stroke();
        ctx.strokeStyle = COLORS.axis;
        ctx.beginPath(); ctx.moveTo(px, bottom); ctx.lineTo(px, bottom + 4); ctx.stroke();
        ctx.fillText(formatNumber(v), px, bottom + 5);
    }
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const v of yTicks) {
        const py = Math.round(sy(v)) + 0.5;
        ctx.strokeStyle = COLORS.grid;
        ctx.beginPath(); ctx.moveTo(left, py); ctx.lineTo(right, py); ctx.stroke();
        ctx.strokeStyle = COLORS.axis;
        ctx.beginPath(); ctx.moveTo(left - 4, py); ctx.lineTo(left, py); ctx.stroke();
        ctx.fillText(formatNumber(v), left - 6, py);
    }
    ctx.strokeStyle = COLORS.axis;
    ctx.strokeRect(left + 0.5, top + 0.5, right - left - 1, bottom - top - 1);

    // Axis labels (with the scale and direction spelled out).
    ctx.fillStyle = COLORS.text;
    if (chart.xLabel) {
        ctx.textAlign = "center";
        ctx.textBaseline = "bottom";
        const suffix = [chart.xLog ? "log" : "", chart.xReversed ? "reversed" : ""].filter(Boolean).join(", ");
        ctx.fillText(chart.xLabel + (suffix ? ` (${suffix})` : ""), (left + right) / 2, height - 3, width - 8);
    }
    if (chart.yLabel) {
        ctx.save();
        ctx.translate(11, (top + bottom) / 2);
        ctx.rotate(-Math.PI / 2);
        ctx.textAlign = "center";
        ctx.textBaseline = "middle";
        ctx.fillText(chart.yLabel + (yLog ? " (log)" : ""), 0, 0, bottom - top);
        ctx.restore();
    }

    // Series, clipped to the plot area.
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, right - left, bottom - top);
    ctx.clip();
    const screen = [];
    const barSeries = chart.series.filter((s) => s.style === "bars");
    chart.series.forEach((s, k) => {
        const points = perSeries[k];
        ctx.strokeStyle = s.color;
        ctx.fillStyle = s.color;
        ctx.lineWidth = 2;
        if (s.style === "bars") {
            const sorted = points.map((p) => sx(p[0])).sort((a, b) => a - b);
            let gap = right - left;
            for (let i = 1; i < sorted.length; i++) if (sorted[i] - sorted[i - 1] > 0.5) gap = Math.min(gap, sorted[i] - sorted[i - 1]);
            const slot = Math.max(1, Math.min(gap * 0.8, 40) / barSeries.length);
            const offset = (barSeries.indexOf(s) - (barSeries.length - 1) / 2) * slot;
            const base = sy(yLog ? yExtent[0] : Math.max(yExtent[0], Math.min(0, yExtent[1])));
            ctx.globalAlpha = 0.8;
            for (const [x, y] of points) {
                const px = sx(x) + offset;
                const py = sy(y);
                ctx.fillRect(px - slot / 2, Math.min(py, base), Math.max(1, slot - 1), Math.abs(base - py));
            }
            ctx.globalAlpha = 1;
        } else if (s.style === "line") {
            // Break the line where a point was skipped (NaN/null), so gaps stay visible.
            ctx.beginPath();
            let pen = false;
            for (let i = 0; i < s.y.length; i++) {
                const ok = isFiniteNumber(s.x[i]) && isFiniteNumber(s.y[i]) && (!chart.xLog || s.x[i] > 0) && (!yLog || s.y[i] > 0);
                if (!ok) { pen = false; continue; }
                const px = sx(s.x[i]);
                const py = sy(s.y[i]);
                if (pen) ctx.lineTo(px, py); else ctx.moveTo(px, py);
                pen = true;
            }
            ctx.stroke();
            if (points.length <= 60) {
                for (const [x, y] of points) {
                    ctx.beginPath(); ctx.arc(sx(x), sy(y), 2, 0, 2 * Math.PI); ctx.fill();
                }
            }
        } else {
            for (const [x, y] of points) {
                ctx.beginPath(); ctx.arc(sx(x), sy(y), 3, 0, 2 * Math.PI); ctx.fill();
            }
        }
        for (const [x, y] of points) screen.push({ px: sx(x), py: sy(y), x, y, series: s });
    });
    ctx.restore();

    // Legend (above the plot, so it never hides data).
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    legendRows.forEach((row, r) => {
        const rowWidth = row.reduce((w, item) => w + item.w, 0);
        let x = Math.max(left, (width - rowWidth) / 2);
        const y = legendTop + r * 15 + 7;
        for (const { s, w } of row) {
            ctx.fillStyle = s.color;
            if (s.style === "line") ctx.fillRect(x, y - 1.5, 14, 3);
            else if (s.style === "bars") ctx.fillRect(x + 2, y - 5, 10, 10);
            else { ctx.beginPath(); ctx.arc(x + 7, y, 3.5, 0, 2 * Math.PI); ctx.fill(); }
            ctx.fillStyle = COLORS.text;
            ctx.fillText(s.name, x + 18, y);
            x += w;
        }
    });

    // Hover read-out: the nearest point (in screen space) to the pointer.
    let nearest = null;
    if (hover && hover.x >= left && hover.x <= right && hover.y >= top && hover.y <= bottom) {
        let best = Infinity;
        for (const p of screen) {
            const d = (p.px - hover.x) ** 2 + (p.py - hover.y) ** 2;
            if (d < best) { best = d; nearest = p; }
        }
    }
    if (nearest) {
        ctx.strokeStyle = COLORS.hover;
        ctx.lineWidth = 1;
        ctx.setLineDash([3, 3]);
        ctx.beginPath();
        ctx.moveTo(nearest.px, top); ctx.lineTo(nearest.px, bottom);
        ctx.moveTo(left, nearest.py); ctx.lineTo(right, nearest.py);
        ctx.stroke();
        ctx.setLineDash([]);
        ctx.fillStyle = nearest.series.color;
        ctx.beginPath(); ctx.arc(nearest.px, nearest.py, 4.5, 0, 2 * Math.PI); ctx.fill();
        const lines = [nearest.series.name, `x = ${formatNumber(nearest.x)}`, `y = ${formatNumber(nearest.y)}`];
        const boxW = Math.max(...lines.map((l) => ctx.measureText(l).width)) + 12;
        const boxH = lines.length * 14 + 6;
        let bx = nearest.px + 10;
        let by = nearest.py - boxH - 6;
        if (bx + boxW > right) bx = nearest.px - boxW - 10;
        if (by < top) by = nearest.py + 8;
        ctx.fillStyle = "rgba(10,10,12,0.88)";
        ctx.fillRect(bx, by, boxW, boxH);
        ctx.strokeStyle = nearest.series.color;
        ctx.strokeRect(bx + 0.5, by + 0.5, boxW - 1, boxH - 1);
        ctx.fillStyle = COLORS.text;
        ctx.textAlign = "left";
        ctx.textBaseline = "top";
        lines.forEach((line, i) => ctx.fillText(line, bx + 6, by + 4 + i * 14));
    }
    ctx.restore();
    return {
        points: total,
        series: chart.series.length,
        screen,
        nearest: nearest ? { series: nearest.series.name, x: nearest.x, y: nearest.y } : null,
        plot: { left, top, right, bottom },
    };
}

// ---------------------------------------------------------------------------------------------------------
// The DOM widget

function el(tag, style, text) {
    const node = document.createElement(tag);
    if (style) node.style.cssText = style;
    if (text != null) node.textContent = text;
    return node;
}

function messageElement(text) {
    return el("div", "color:#e8a0a0;font:12px sans-serif;padding:6px 8px;white-space:pre-wrap;", text);
}

/** One chart panel: toolbar (log-y toggle), canvas with hover read-out, caption (parameterization, notes). */
function createPanel(chart, onDrawn) {
    const panel = el("div", "display:flex;flex-direction:column;flex:1 1 auto;gap:2px;");
    panel.className = "flowscope-chart-panel";
    const toolbar = el("div", `display:flex;align-items:center;justify-content:flex-end;gap:6px;height:${TOOLBAR_HEIGHT}px;flex:none;font:11px sans-serif;color:${COLORS.muted};`);
    const label = el("label", "display:flex;align-items:center;gap:4px;cursor:pointer;user-select:none;");
    const toggle = el("input");
    toggle.type = "checkbox";
    toggle.className = "flowscope-ylog";
    toggle.checked = chart.yLog;
    toggle.title = "Logarithmic y axis";
    label.append(toggle, document.createTextNode("log y"));
    toolbar.append(label);

    // The canvas sits absolutely in a holder so that its bitmap size never feeds back into the layout
    // (a canvas with CSS height auto keeps the aspect ratio of its last bitmap).
    const holder = el("div", `position:relative;flex:1 1 0;min-height:${CANVAS_MIN_HEIGHT}px;`);
    const canvas = el("canvas", "position:absolute;left:0;top:0;width:100%;height:100%;display:block;border-radius:4px;cursor:crosshair;");
    holder.append(canvas);
    const message = messageElement("");
    message.style.display = "none";
    const caption = el("div", `flex:none;font:11px sans-serif;color:${COLORS.muted};line-height:${CAPTION_LINE_HEIGHT}px;padding:0 2px;overflow-wrap:anywhere;`);
    caption.className = "flowscope-caption";
    if (chart.parameterization) {
        const text = /^parameteri[sz]ation/i.test(chart.parameterization)
            ? chart.parameterization : `parameterization: ${chart.parameterization}`;
        const line = el("div", `color:${COLORS.text};`, text);
        line.className = "flowscope-parameterization";
        caption.append(line);
    }
    for (const note of chart.notes) {
        const line = el("div", null, note);
        line.className = "flowscope-note";
        caption.append(line);
    }
    panel.append(toolbar, message, holder, caption);

    const state = { yLog: chart.yLog, hover: null, result: null };
    const draw = () => {
        const width = holder.clientWidth;
        const height = holder.clientHeight;
        if (width < 2 || height < 2) return; // not laid out yet: the ResizeObserver draws it later
        const dpr = window.devicePixelRatio || 1;
        if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
            canvas.width = Math.round(width * dpr);
            canvas.height = Math.round(height * dpr);
        }
        const ctx = canvas.getContext("2d");
        ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
        let result;
        try {
            result = drawChart(ctx, chart, width, height, { yLog: state.yLog, hover: state.hover });
        } catch (error) {
            console.error("FlowScope: drawing the chart failed", error);
            result = { error: `FlowScope: no data to plot (drawing failed: ${error.message})`, points: 0, series: 0, screen: [] };
        }
        if (result.error) {
            // Nothing to plot with these settings (e.g. log y and no positive value): say so on the canvas too;
            // the toolbar stays, so switching log y off can bring the data back.
            ctx.fillStyle = COLORS.background;
            ctx.fillRect(0, 0, width, height);
            ctx.fillStyle = COLORS.muted;
            ctx.font = FONT;
            ctx.textAlign = "center";
            ctx.textBaseline = "middle";
            ctx.fillText("no data to plot", width / 2, height / 2);
        }
        message.textContent = result.error || "";
        message.style.display = result.error ? "" : "none";
        state.result = result;
        panel.dataset.flowscopePoints = String(result.points);
        panel.dataset.flowscopeSeries = String(result.series);
        panel.dataset.flowscopeYLog = state.yLog ? "1" : "0";
        panel.dataset.flowscopeHover = result.nearest ? JSON.stringify(result.nearest) : "";
        panel.dataset.flowscopePlot = result.plot ? JSON.stringify(result.plot) : "";
        onDrawn();
    };

    toggle.addEventListener("change", () => {
        state.yLog = toggle.checked;
        draw();
    });
    const pointer = (event) => {
        const rect = canvas.getBoundingClientRect();
        if (!rect.width || !rect.height) return null;
        // The classic renderer scales the widget with a CSS transform: map back to the canvas' own pixels.
        return {
            x: (event.clientX - rect.left) * (canvas.clientWidth / rect.width),
            y: (event.clientY - rect.top) * (canvas.clientHeight / rect.height),
        };
    };
    canvas.addEventListener("pointermove", (event) => {
        state.hover = pointer(event);
        draw();
    });
    canvas.addEventListener("pointerleave", () => {
        state.hover = null;
        draw();
    });
    // Keep the graph canvas from panning/zooming while the pointer is on the chart.
    canvas.addEventListener("pointerdown", (event) => event.stopPropagation());

    panel.flowscope = { draw, state, canvas, toggle, caption };
    return panel;
}

/** Replace the contents of a chart widget element with the charts of `value` and draw them. */
export function renderCharts(element, value) {
    element.flowscopeObserver?.disconnect();
    element.replaceChildren();
    element.dataset.flowscopeDrawn = "0";
    const elements = payloadElements(value);
    const panels = [];
    const errors = [];
    for (const raw of elements) {
        const { chart, error } = normalizeChart(raw);
        if (error) errors.push(error);
        else panels.push(createPanel(chart, () => summarize()));
    }
    function summarize() {
        if (panels.some((p) => !p.flowscope.state.result)) return; // wait until every panel drew once
        const points = panels.reduce((n, p) => n + p.flowscope.state.result.points, 0);
        const series = panels.reduce((n, p) => n + p.flowscope.state.result.series, 0);
        const drawErrors = panels.map((p) => p.flowscope.state.result.error).filter(Boolean);
        element.dataset.flowscopePoints = String(points);
        element.dataset.flowscopeSeries = String(series);
        element.dataset.flowscopeError = [...errors, ...drawErrors].join("; ");
        element.dataset.flowscopeDrawn = "1";
    }
    element.flowscopePanels = panels;

    if (panels.length === 0) {
        const reason = elements.length > 0 ? errors.join("; ")
            : Array.isArray(value) ? "the payload is empty" : `the payload is not a list of charts but ${typeof value}`;
        element.append(messageElement(`FlowScope: no data to plot (${reason}).`));
        fitHeight(element);
        element.dataset.flowscopePoints = "0";
        element.dataset.flowscopeSeries = "0";
        element.dataset.flowscopeError = reason;
        element.dataset.flowscopeDrawn = "1";
        return element;
    }
    for (const error of errors) element.append(messageElement(`FlowScope: one chart was skipped (${error}).`));
    element.append(...panels);
    const drawAll = () => {
        fitHeight(element);
        panels.forEach((p) => p.flowscope.draw());
    };
    if (typeof ResizeObserver !== "undefined") {
        element.flowscopeObserver = new ResizeObserver(() => drawAll());
        element.flowscopeObserver.observe(element);
    }
    requestAnimationFrame(drawAll);
    drawAll();
    return element;
}

/**
 * The height the widget needs at its current width (captions wrap), kept as `flowscopeMinHeight` for the
 * classic renderer's getMinHeight and as CSS min-height for the Vue renderer, which sizes widgets from their
 * content. A node that is too short for it grows (it never shrinks).
 */
function fitHeight(element) {
    const GAP = 6;
    const PADDING = 8;
    let height = PADDING;
    for (const child of element.children) {
        if (child.flowscope) {
            const captionLines = child.flowscope.caption.childElementCount;
            const caption = child.flowscope.caption.offsetHeight || captionLines * CAPTION_LINE_HEIGHT * 1.5;
            height += TOOLBAR_HEIGHT + CANVAS_MIN_HEIGHT + caption + 3 * 2;
        } else {
            height += child.offsetHeight || 40;
        }
        height += GAP;
    }
    height = Math.ceil(height);
    if (height === element.flowscopeMinHeight) return;
    element.flowscopeMinHeight = height;
    element.style.minHeight = `${height}px`;
    const node = element.flowscopeNode;
    const wanted = node?.computeSize?.();
    if (wanted && node.size && node.size[1] < wanted[1]) {
        node.setSize([node.size[0], wanted[1]]);
        node.setDirtyCanvas?.(true, true);
    }
}

function createChartElement() {
    const element = el("div", "display:flex;flex-direction:column;gap:6px;width:100%;height:100%;box-sizing:border-box;padding:4px;overflow:hidden;");
    // "widget-expands": the Vue renderer lets such a widget take the node's spare height (as its own
    // textarea, markdown and 3D widgets do); the classic renderer ignores the class.
    element.className = "flowscope-chart widget-expands";
    element.dataset.flowscopeDrawn = "0";
    return element;
}

/** Show the chart payload `value` (the output's `flowscope_chart` entry) in `node`'s chart widget. */
export function showNodeCharts(node, value) {
    let widget = node.widgets?.find((w) => w.name === WIDGET_NAME);
    if (!widget) {
        const element = createChartElement();
        widget = node.addDOMWidget(WIDGET_NAME, "div", element, {
            serialize: false,
            hideOnZoom: false,
            getMinHeight: () => element.flowscopeMinHeight ?? 60,
        });
        widget.serialize = false;
    }
    widget.element.flowscopeNode = node;
    renderCharts(widget.element, value);
    // Grow the node so the chart gets at least its minimum size (never shrink what the user chose).
    const wanted = node.computeSize?.();
    if (wanted && node.size) {
        const minWidth = widget.element.flowscopePanels.length ? 420 : 0;
        node.setSize([Math.max(node.size[0], wanted[0], minWidth), Math.max(node.size[1], wanted[1])]);
    }
    node.setDirtyCanvas?.(true, true);
    app.graph?.setDirtyCanvas?.(true, true);
    return widget.element;
}

app.registerExtension({
    name: EXTENSION_NAME,
    async beforeRegisterNodeDef(nodeType) {
        const onExecuted = nodeType.prototype.onExecuted;
        nodeType.prototype.onExecuted = function (output) {
            // The chart first, so that a failing onExecuted of the node type itself cannot hide it.
            if (output && typeof output === "object" && CHART_KEY in output) {
                try {
                    showNodeCharts(this, output[CHART_KEY]);
                } catch (error) {
                    console.error(`FlowScope: could not show the chart of node ${this.id}`, error);
                }
            }
            return onExecuted?.apply(this, arguments);
        };
    },
});
