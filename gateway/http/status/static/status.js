/* Iris status page: reads the gateway's event stream (status/events) and redraws. Every value goes in
   through textContent, never as HTML. */
(function () {
  "use strict";
  var history = {};       // "model/workload" -> [[sent_ms, p50_s, p95_s, queued, running], ...]
  var historyMs = 300000;
  var palette = {};

  function $(id) { return document.getElementById(id); }

  function node(tag, text, cls) {
    var n = document.createElement(tag);
    if (text !== undefined && text !== null) n.textContent = String(text);
    if (cls) n.className = cls;
    return n;
  }

  function cell(row, text, cls, field) {
    var td = node("td", text, cls);
    if (field) td.dataset.field = field;
    row.appendChild(td);
    return td;
  }

  function seconds(value) { return value >= 10 ? value.toFixed(0) + " s" : value.toFixed(2) + " s"; }
  function percent(value) { return Math.round(value * 100) + "%"; }
  function clock(ms) { return new Date(ms).toLocaleTimeString([], { hour12: false }); }

  function bar(share, target) {
    var wrap = node("span", null, "bar");
    var fill = node("span", null, "fill");
    fill.style.width = Math.min(100, share * 100) + "%";
    wrap.appendChild(fill);
    if (target > 0) {
      var mark = node("span", null, "target");
      mark.style.left = "calc(" + Math.min(100, target * 100) + "% - 1px)";
      wrap.appendChild(mark);
    }
    return wrap;
  }

  function fill(tbody, rows, columns, makeRow) {
    while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
    if (!rows.length) {
      var empty = node("tr", null, "empty");
      var td = node("td", tbody.dataset.empty);
      td.colSpan = columns;
      empty.appendChild(td);
      tbody.appendChild(empty);
      return;
    }
    rows.forEach(function (row) { tbody.appendChild(makeRow(row)); });
  }

  function workloadRow(w) {
    var tr = node("tr");
    tr.dataset.flow = w.model + "/" + w.workload;
    cell(tr, w.model);
    cell(tr, w.workload);
    cell(tr, w.weight + " × " + w.priority, "num");
    cell(tr, w.queued, "num", "queued");
    cell(tr, w.running, "num", "running");
    var share = cell(tr, null, null, "share");
    share.appendChild(bar(w.share, w.target_share));
    share.appendChild(node("span", percent(w.share) + " / " + (w.target_share ? percent(w.target_share) : "–"), "figure"));
    cell(tr, seconds(w.wait_p50_s), "num");
    cell(tr, seconds(w.wait_p95_s), "num");
    cell(tr, w.started, "num");
    return tr;
  }

  function workerRow(w) {
    var tr = node("tr");
    tr.dataset.worker = w.worker;
    cell(tr, w.worker);
    cell(tr, w.model);
    cell(tr, w.device);
    cell(tr, w.slots, "num", "slots");
    cell(tr, w.busy, "num", "busy");
    var use = cell(tr, null);
    use.appendChild(bar(w.utilization, 0));
    use.appendChild(node("span", percent(w.utilization), "figure"));
    cell(tr, w.tokens_per_s.toFixed(1), "num");
    cell(tr, w.state, "state-" + w.state);
    return tr;
  }

  function rejectionRow(r) {
    var tr = node("tr");
    cell(tr, clock(r.at_ms));
    cell(tr, r.where === "gateway" ? "gateway " + r.status + " " + r.route : "broker");
    cell(tr, r.model || "–");
    cell(tr, r.workload || "–");
    cell(tr, r.code, "code");
    cell(tr, r.reason, "reason");
    return tr;
  }

  function record(snapshot) {
    if (!snapshot.broker) return;
    var at = snapshot.broker.sent_ms;
    snapshot.workloads.forEach(function (w) {
      var key = w.model + "/" + w.workload;
      var points = history[key] || (history[key] = []);
      if (!points.length || points[points.length - 1][0] < at) {
        points.push([at, w.wait_p50_s, w.wait_p95_s, w.queued, w.running]);
      }
    });
    Object.keys(history).forEach(function (key) {
      var points = history[key];
      while (points.length && points[0][0] < at - historyMs) points.shift();
      if (!points.length) delete history[key];
    });
  }

  function colour(key) {
    if (!palette[key]) palette[key] = IrisCharts.palette[Object.keys(palette).length % IrisCharts.palette.length];
    return palette[key];
  }

  function chartBox(container, id, title) {
    var box = document.getElementById(id);
    if (!box) {
      box = node("div", null, "chart");
      box.id = id;
      box.appendChild(node("h3", title));
      box.appendChild(IrisCharts.svg("svg", { role: "img", "aria-label": title }));
      container.appendChild(box);
    }
    return box.querySelector("svg");
  }

  function byModel() {
    var models = {};
    Object.keys(history).sort().forEach(function (key) {
      var model = key.split("/")[0];
      (models[model] = models[model] || []).push(key);
    });
    return models;
  }

  function column(points, index) { return points.map(function (p) { return [p[0], p[index]]; }); }

  function drawCharts(nowMs) {
    var container = $("charts"), models = byModel();
    if (!Object.keys(models).length) return;
    var hint = container.querySelector("p");
    if (hint) container.removeChild(hint);
    var first = Math.min.apply(null, Object.keys(history).map(function (key) { return history[key][0][0]; }));
    var axis = {  // from the first point heard (at least the last minute) up to the history's reach
      xMin: Math.max(nowMs - historyMs, Math.min(first, nowMs - 60000)), xMax: nowMs,
      xTicks: function (v) { var s = Math.round((v - nowMs) / 1000); return s ? s + " s" : "now"; }
    };
    Object.keys(models).forEach(function (model) {
      var wait = [], depth = [], legend = [];
      models[model].forEach(function (key) {
        var name = key.slice(model.length + 1), color = colour(key), points = history[key];
        legend.push({ label: name, color: color });
        wait.push({ label: name + " p50", color: color, points: column(points, 1) });
        wait.push({ label: name + " p95", color: color, dash: true, points: column(points, 2) });
        depth.push({ label: name + " queued", color: color, points: column(points, 3) });
        depth.push({ label: name + " running", color: color, dash: true, points: column(points, 4) });
      });
      IrisCharts.draw(chartBox(container, "wait-" + model, model + ": queue wait, p50 solid, p95 dashed"),
                      Object.assign({ series: wait, legend: legend, yUnit: " s" }, axis));
      IrisCharts.draw(chartBox(container, "depth-" + model, model + ": requests queued solid, running dashed"),
                      Object.assign({ series: depth, legend: legend }, axis));
    });
  }

  function renderHeader(snapshot) {
    var b = snapshot.broker;
    if (!b) {
      $("broker").textContent = "no broker stats yet: is a broker running?";
      $("window").textContent = "";
      return;
    }
    var stale = b.age_s > 5 ? " · STALE: no stats for " + b.age_s.toFixed(0) + " s" : "";
    var who = b.id ? "broker " + b.id + " · " : "";
    $("broker").textContent = who + "policy " + b.policy + " · stats at " + clock(b.sent_ms) + stale;
    $("window").textContent = "(shares, waits and starts over the last " + b.window_s.toFixed(0) + " s)";
  }

  function renderTotals(snapshot) {
    var sum = function (rows, field) { return rows.reduce(function (t, r) { return t + r[field]; }, 0); };
    $("total-queued").textContent = sum(snapshot.workloads, "queued");
    $("total-running").textContent = sum(snapshot.workloads, "running");
    $("total-slots").textContent = sum(snapshot.workers, "busy") + " / " + sum(snapshot.workers, "slots");
    $("total-tps").textContent = sum(snapshot.workers, "tokens_per_s").toFixed(0);
    $("total-rejected").textContent = snapshot.rejections.length;
  }

  function render(snapshot) {
    renderHeader(snapshot);
    renderTotals(snapshot);
    $("workloads").tBodies[0].dataset.empty = snapshot.broker
      ? "No requests in the window." : "No broker stats yet: is a broker running?";
    fill($("workloads").tBodies[0], snapshot.workloads, 9, workloadRow);
    fill($("workers").tBodies[0], snapshot.workers, 8, workerRow);
    fill($("rejections").tBodies[0], snapshot.rejections, 6, rejectionRow);
    drawCharts(snapshot.broker ? snapshot.broker.sent_ms : snapshot.now_ms);
    document.body.dataset.sentMs = snapshot.broker ? snapshot.broker.sent_ms : "";
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  }

  function connected(on) {
    var pill = $("connection");
    pill.textContent = on ? "live" : "reconnecting…";
    pill.className = "pill " + (on ? "on" : "off");
  }

  function start() {
    ["workloads", "workers", "rejections"].forEach(function (id) {
      var body = $(id).tBodies[0];
      body.dataset.empty = body.textContent.trim();
    });
    var source = new EventSource("status/events");
    source.addEventListener("open", function () { connected(true); });
    source.addEventListener("error", function () { connected(false); });
    source.addEventListener("history", function (event) {
      var data = JSON.parse(event.data);
      historyMs = data.history_s * 1000;
      history = data.flows;
    });
    source.addEventListener("snapshot", function (event) {
      var snapshot = JSON.parse(event.data);
      record(snapshot);
      render(snapshot);
    });
  }

  start();
})();
