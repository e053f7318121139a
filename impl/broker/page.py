"""The live status page served at ``/``.

One self-contained HTML document: no external scripts, styles, fonts or images. Its script
polls ``/v1/stats``, ``/v1/jobs?limit=50`` and ``/v1/dead?limit=20`` every second and
fills the page with ``textContent`` only, so payloads and error texts are never parsed as
HTML. Elements that tests read carry ``id`` attributes (``count-unclaimed``,
``broker-role``, ``updated`` and so on).

NOTE: with ``OSQUEUE_TOKEN`` set, the page and its requests need an Authorization header
that a browser does not send by itself, for example one added by a reverse proxy.
"""

STATUS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>osqueue broker</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d1d1f; }
  h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
  h2 { font-size: 1rem; margin: 1.2rem 0 .4rem; }
  .cards { display: flex; flex-wrap: wrap; gap: .6rem; }
  .card { border: 1px solid #ccc; border-radius: 6px; padding: .5rem .8rem; min-width: 7rem; }
  .card .value { font-size: 1.4rem; font-variant-numeric: tabular-nums; }
  .card .label { color: #555; font-size: .8rem; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: .2rem .5rem; border-bottom: 1px solid #eee;
           font-variant-numeric: tabular-nums; }
  td.payload { font-family: monospace; max-width: 30rem; overflow: hidden;
               text-overflow: ellipsis; white-space: nowrap; }
  #error { color: #b00020; }
  .muted { color: #666; }
</style>
</head>
<body>
<h1>osqueue broker</h1>
<div class="muted">
  <span id="broker-address">-</span> is <strong id="broker-role">-</strong>,
  epoch <span id="broker-epoch">-</span>, leader <span id="broker-leader">-</span>,
  state sequence <span id="state-sequence">-</span>.
  Updated <span id="updated">never</span>. <span id="error"></span>
</div>

<h2>Jobs</h2>
<div class="cards">
  <div class="card"><div class="value" id="count-unclaimed">-</div>
    <div class="label">unclaimed</div></div>
  <div class="card"><div class="value" id="count-delayed">-</div>
    <div class="label">delayed</div></div>
  <div class="card"><div class="value" id="count-in-progress">-</div>
    <div class="label">in progress</div></div>
  <div class="card"><div class="value" id="count-dead">-</div>
    <div class="label">dead letters</div></div>
</div>

<h2>Throughput</h2>
<div class="cards">
  <div class="card"><div class="value" id="rate-enqueued">-</div>
    <div class="label">enqueued / s</div></div>
  <div class="card"><div class="value" id="rate-completed">-</div>
    <div class="label">completed / s</div></div>
  <div class="card"><div class="value" id="counter-enqueued">-</div>
    <div class="label">enqueued (total)</div></div>
  <div class="card"><div class="value" id="counter-completed">-</div>
    <div class="label">completed (total)</div></div>
  <div class="card"><div class="value" id="counter-returned">-</div>
    <div class="label">returned (total)</div></div>
  <div class="card"><div class="value" id="counter-expired">-</div>
    <div class="label">expired (total)</div></div>
</div>

<h2>Engine</h2>
<div class="cards">
  <div class="card"><div class="value" id="engine-commits">-</div>
    <div class="label">commits</div></div>
  <div class="card"><div class="value" id="engine-conflicts">-</div>
    <div class="label">conflicts</div></div>
  <div class="card"><div class="value" id="engine-batch">-</div>
    <div class="label">mean batch size</div></div>
  <div class="card"><div class="value" id="engine-latency">-</div>
    <div class="label">commit latency p50 (ms)</div></div>
  <div class="card"><div class="value" id="engine-indeterminate">-</div>
    <div class="label">indeterminate writes</div></div>
</div>

<h2>Live jobs (first 50)</h2>
<table>
  <thead><tr><th>id</th><th>type</th><th>status</th><th>attempts</th><th>worker</th>
    <th>payload</th></tr></thead>
  <tbody id="jobs"></tbody>
</table>

<h2>Dead letters (newest 20)</h2>
<table>
  <thead><tr><th>id</th><th>type</th><th>attempts</th><th>reason</th></tr></thead>
  <tbody id="dead"></tbody>
</table>

<script>
"use strict";
const POLL_MS = 1000;

function show(id, value) {
  document.getElementById(id).textContent = value === null || value === undefined ? "-" : String(value);
}

function fixed(value, digits) {
  return typeof value === "number" ? value.toFixed(digits) : "-";
}

function fillRows(id, rows) {
  const body = document.getElementById(id);
  const fresh = document.createElement("tbody");
  fresh.id = id;
  for (const cells of rows) {
    const row = document.createElement("tr");
    cells.forEach((text, index) => {
      const cell = document.createElement("td");
      cell.textContent = text;
      if (id === "jobs" && index === 5) cell.className = "payload";
      row.appendChild(cell);
    });
    fresh.appendChild(row);
  }
  body.replaceWith(fresh);
}

async function getJson(path) {
  const response = await fetch(path, {cache: "no-store"});
  const body = await response.json();
  if (!response.ok) throw new Error(path + ": " + (body._tag || response.status) + " " + (body.message || ""));
  return body;
}

function renderStats(stats) {
  const broker = stats.broker;
  show("broker-address", broker.address);
  show("broker-role", broker.role);
  show("broker-epoch", broker.leaderEpoch);
  show("broker-leader", broker.leaderAddress);
  show("state-sequence", broker.sequence);
  const counts = stats.counts || {};
  show("count-unclaimed", counts.unclaimed);
  show("count-delayed", counts.delayed);
  show("count-in-progress", counts.inProgress);
  show("count-dead", counts.dead);
  const counters = stats.counters || {};
  show("counter-enqueued", counters.enqueued);
  show("counter-completed", counters.completed);
  show("counter-returned", counters.returned);
  show("counter-expired", counters.expired);
  show("rate-enqueued", fixed(stats.throughput.enqueuedPerSecond, 1));
  show("rate-completed", fixed(stats.throughput.completedPerSecond, 1));
  const engine = stats.engine || {};
  show("engine-commits", engine.commits);
  show("engine-conflicts", engine.conflicts);
  show("engine-batch", fixed(engine.batchSizeMean, 1));
  show("engine-latency", typeof engine.commitLatencyP50 === "number" ? (engine.commitLatencyP50 * 1000).toFixed(1) : "-");
  show("engine-indeterminate", engine.indeterminate);
}

async function refresh() {
  try {
    const [stats, jobs, dead] = await Promise.all([
      getJson("/v1/stats"), getJson("/v1/jobs?limit=50"), getJson("/v1/dead?limit=20"),
    ]);
    renderStats(stats);
    fillRows("jobs", jobs.jobs.map((job) => [
      job.id, job.type, job.status, job.attempts + " / " + job.maxAttempts,
      job.claimedBy || "", JSON.stringify(job.payload).slice(0, 200),
    ]));
    fillRows("dead", dead.dead.slice().reverse().map((letter) => [
      letter.job.id, letter.job.type, letter.job.attempts + " / " + letter.job.maxAttempts,
      letter.reason,
    ]));
    show("error", "");
    show("updated", new Date().toLocaleTimeString());
  } catch (error) {
    show("error", "update failed: " + error.message);
  } finally {
    setTimeout(refresh, POLL_MS);
  }
}

refresh();
</script>
</body>
</html>
"""
