/* Iris charts: small SVG line and dot charts, no dependencies. Used by the status page and by the seed
   experiment's HTML report (which inlines this file).
   IrisCharts.draw(svg, {series: [{label, color, dash, dots, points: [[x, y], ...]}],
                         legend: [{label, color, dash}] (default: one entry per series),
                         xMin, xMax, yMax, xTicks(x) -> text, yUnit, width, height}) */
(function (root) {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var PALETTE = ["#5b4bc4", "#e07a1f", "#1f9d8a", "#c43c3c", "#3b7dd8", "#8a8a1f", "#b0489e", "#555566"];

  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (parent) parent.appendChild(node);
    return node;
  }

  function niceMax(value) {
    if (!(value > 0)) return 1;
    var step = Math.pow(10, Math.floor(Math.log10(value)));
    var ratios = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < ratios.length; i++) if (ratios[i] * step >= value) return ratios[i] * step;
    return 10 * step;
  }

  function formatNumber(value) {
    if (value === 0) return "0";
    if (Math.abs(value) >= 100) return value.toFixed(0);
    if (Math.abs(value) >= 10) return value.toFixed(1).replace(/\.0$/, "");
    return value.toFixed(2).replace(/0$/, "").replace(/\.0$/, "");
  }

  function extent(series, index) {
    var low = Infinity, high = -Infinity;
    series.forEach(function (s) {
      s.points.forEach(function (p) { low = Math.min(low, p[index]); high = Math.max(high, p[index]); });
    });
    return [low, high];
  }

  function frame(svg, spec, box, x, y, yMax) {
    var n = 4;
    for (var i = 0; i <= n; i++) {
      var value = (yMax * i) / n, py = y(value);
      el("line", { x1: box.left, x2: box.right, y1: py, y2: py, "class": i ? "grid" : "axis" }, svg);
      el("text", { x: box.left - 4, y: py + 3, "text-anchor": "end" }, svg).textContent =
        formatNumber(value) + (spec.yUnit || "");
    }
    var xTicks = spec.xTicks || formatNumber;
    for (var j = 0; j <= 4; j++) {
      var xv = spec.xMin + ((spec.xMax - spec.xMin) * j) / 4;
      el("text", { x: x(xv), y: box.bottom + 12, "text-anchor": j === 0 ? "start" : j === 4 ? "end" : "middle" }, svg)
        .textContent = xTicks(xv);
    }
  }

  function legend(svg, series, box) {
    var offset = box.left;
    series.forEach(function (s, i) {
      var color = s.color || PALETTE[i % PALETTE.length];
      el("line", { x1: offset, x2: offset + 14, y1: 8, y2: 8, stroke: color, "stroke-width": 2,
                   "stroke-dasharray": s.dash ? "4 3" : "" }, svg);
      var label = el("text", { x: offset + 18, y: 11 }, svg);
      label.textContent = s.label;
      offset += 26 + 6.2 * s.label.length;
    });
  }

  function plot(svg, s, i, x, y) {
    var color = s.color || PALETTE[i % PALETTE.length];
    if (s.dots) {
      s.points.forEach(function (p) { el("circle", { cx: x(p[0]), cy: y(p[1]), r: 2.2, fill: color, "fill-opacity": 0.75 }, svg); });
      return;
    }
    if (!s.points.length) return;
    var path = s.points.map(function (p, k) { return (k ? "L" : "M") + x(p[0]).toFixed(1) + " " + y(p[1]).toFixed(1); });
    el("path", { d: path.join(""), fill: "none", stroke: color, "stroke-width": 1.6,
                 "stroke-dasharray": s.dash ? "4 3" : "", "stroke-linejoin": "round" }, svg);
  }

  function draw(svg, spec) {
    var width = spec.width || 420, height = spec.height || 160;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    var box = { left: 44, right: width - 8, top: 20, bottom: height - 18 };
    var series = spec.series || [];
    var xs = extent(series, 0);
    if (spec.xMin === undefined) spec.xMin = isFinite(xs[0]) ? xs[0] : 0;
    if (spec.xMax === undefined) spec.xMax = isFinite(xs[1]) ? xs[1] : 1;
    if (spec.xMax <= spec.xMin) spec.xMax = spec.xMin + 1;
    var yMax = niceMax(spec.yMax !== undefined ? spec.yMax : extent(series, 1)[1]);
    function x(v) { return box.left + ((v - spec.xMin) / (spec.xMax - spec.xMin)) * (box.right - box.left); }
    function y(v) { return box.bottom - (Math.min(v, yMax) / yMax) * (box.bottom - box.top); }
    frame(svg, spec, box, x, y, yMax);
    series.forEach(function (s, i) { plot(svg, s, i, x, y); });
    legend(svg, spec.legend || series, box);
    return yMax;
  }

  root.IrisCharts = { draw: draw, niceMax: niceMax, number: formatNumber, palette: PALETTE, svg: el };
})(window);
