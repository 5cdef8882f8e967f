// connectd status page: polls /connectors, pauses and resumes, tails /v1/stream.
// Plain JS, no dependencies: it is compiled into the binary and works offline.
"use strict";

const REFRESH_MS = 2000;
const TAIL_MAX = 200;
let previous = new Map(); // name -> {t, in, out}
let socket = null;

function token() { return sessionStorage.getItem("connectd.adminToken") || ""; }

async function api(path, method) {
  const headers = {};
  if (token()) headers["Authorization"] = "Bearer " + token();
  const r = await fetch(path, { method: method || "GET", headers });
  if (r.status === 401) {
    document.getElementById("token-box").hidden = false;
    throw new Error("the admin token is missing or wrong");
  }
  if (!r.ok) throw new Error(method + " " + path + ": HTTP " + r.status);
  return r.json();
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function rate(name, v, now) {
  const p = previous.get(name);
  if (!p || now <= p.t) return ["–", "–"];
  const dt = (now - p.t) / 1000;
  return [((v.records_in - p.in) / dt).toFixed(0), ((v.records_out - p.out) / dt).toFixed(0)];
}

function render(list) {
  const now = Date.now();
  const body = document.querySelector("#connectors tbody");
  body.replaceChildren();
  for (const c of list) {
    const tr = document.createElement("tr");
    tr.dataset.connector = c.name;
    cell(tr, c.name);
    cell(tr, c.type + " (" + c.kind + ")");
    cell(tr, c.state, "state state-" + c.state);
    cell(tr, c.kind === "source" ? "–" : String(c.assigned_partitions), "num");
    const lagTotal = Object.values(c.lag || {}).reduce((a, b) => a + b, 0);
    const lag = cell(tr, c.kind === "source" ? "–" : String(lagTotal), "num");
    lag.title = Object.entries(c.lag || {}).map(([k, v]) => k + ": " + v).join("\n");
    const [rin, rout] = rate(c.name, c, now);
    cell(tr, rin, "num");
    cell(tr, rout, "num");
    cell(tr, String(c.records_in), "num");
    cell(tr, String(c.records_out), "num");
    cell(tr, String(c.dlq_records), "num dlq");
    const b = c.dlq_breaker;
    cell(tr, b ? b.state + " " + (100 * b.dead_ratio).toFixed(1) + "% / " + (100 * b.max_ratio).toFixed(1) + "%" : "off",
      b && b.state === "open" ? "breaker-open" : "");
    cell(tr, c.last_error || "", "err");
    const act = cell(tr, "");
    const paused = c.state === "paused";
    const btn = document.createElement("button");
    btn.textContent = paused || c.state === "failed" ? "Resume" : "Pause";
    btn.className = paused || c.state === "failed" ? "resume" : "pause";
    btn.disabled = c.kind === "source";
    btn.title = c.kind === "source" ? "sources are not paused from here" : "";
    btn.addEventListener("click", async () => {
      btn.disabled = true;
      try {
        await api("/connectors/" + encodeURIComponent(c.name) + "/" + (btn.className === "resume" ? "resume" : "pause"), "POST");
      } catch (e) { showError(e); }
      refresh();
    });
    act.appendChild(btn);
    body.appendChild(tr);
    previous.set(c.name, { t: now, in: c.records_in, out: c.records_out });
  }
  const failed = list.filter(c => c.state === "failed").length;
  document.getElementById("summary").textContent =
    list.length + " connectors" + (failed ? ", " + failed + " failed" : "");
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  fillSources(list);
}

function showError(e) {
  const p = document.getElementById("error");
  p.textContent = String(e.message || e);
  p.hidden = false;
}

async function refresh() {
  try {
    const list = await api("/connectors");
    document.getElementById("error").hidden = true;
    render(list);
  } catch (e) { showError(e); }
}

// Live tail of an http_source's /v1/stream.
function streamUrl(listen) {
  const [host, port] = [listen.slice(0, listen.lastIndexOf(":")), listen.slice(listen.lastIndexOf(":") + 1)];
  const h = (host === "0.0.0.0" || host === "[::]" || host === "") ? location.hostname : host;
  return (location.protocol === "https:" ? "wss://" : "ws://") + h + ":" + port + "/v1/stream";
}

function fillSources(list) {
  const sel = document.getElementById("tail-source");
  const streams = list.filter(c => c.type === "http_source" && c.config && c.config.stream);
  const want = streams.map(c => c.name).join(",");
  if (sel.dataset.names === want) return;
  sel.dataset.names = want;
  sel.replaceChildren();
  for (const c of streams) {
    const o = document.createElement("option");
    o.value = streamUrl(c.config.listen || "127.0.0.1:8080");
    o.textContent = c.name + " — " + o.value;
    sel.appendChild(o);
  }
  document.getElementById("tail-connect").disabled = streams.length === 0;
}

function tailStatus(text) { document.getElementById("tail-status").textContent = text; }

function connectTail(ev) {
  ev.preventDefault();
  if (socket) socket.close();
  let url = document.getElementById("tail-source").value;
  const types = document.getElementById("tail-types").value.trim();
  if (types) url += "?event_type=" + encodeURIComponent(types);
  const key = document.getElementById("tail-key").value.trim();
  let received = 0;
  socket = new WebSocket(url, ["connectd.v1", "connectd.key." + key]);
  tailStatus("connecting to " + url + " …");
  socket.onopen = () => {
    tailStatus("connected to " + url);
    document.getElementById("tail-disconnect").disabled = false;
  };
  socket.onmessage = (m) => {
    let events;
    try { events = JSON.parse(m.data); } catch (_) { return; }
    const ol = document.getElementById("tail-events");
    for (const e of events) {
      const li = document.createElement("li");
      li.textContent = JSON.stringify(e);
      ol.insertBefore(li, ol.firstChild);
      received++;
    }
    while (ol.children.length > TAIL_MAX) ol.removeChild(ol.lastChild);
    tailStatus("connected to " + url + " — " + received + " events received");
  };
  socket.onclose = (c) => {
    tailStatus("closed (" + c.code + (c.reason ? " " + c.reason : "") + ") after " + received + " events");
    document.getElementById("tail-disconnect").disabled = true;
  };
  socket.onerror = () => tailStatus("the stream refused the connection or failed (wrong key? stream off?)");
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem("connectd.adminToken", document.getElementById("token").value);
    document.getElementById("token-box").hidden = true;
    refresh();
  });
  document.getElementById("tail-form").addEventListener("submit", connectTail);
  document.getElementById("tail-disconnect").addEventListener("click", () => socket && socket.close(1000));
  refresh();
  setInterval(refresh, REFRESH_MS);
});
