"""``/`` and ``/playground``: one self-contained page (no external scripts, styles or fonts) to try the served tasks
from a browser: pick a task, fill its fields, see the label with every label's score, or the generated text
streamed as it is produced (through ``/v1/chat/completions``). With API keys set, the page loads without a key (it
holds no data) and its calls send the key typed into it (kept in the tab's session storage, shared with ``/docs``);
every call that reads or predicts needs it.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ptune playground</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 15px/1.4 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
[hidden] { display: none !important; }
label { display: block; margin-top: .8rem; font-weight: 600; }
textarea, input, select { width: 100%; box-sizing: border-box; font: inherit; padding: .3rem; }
button { margin-top: 1rem; padding: .4rem 1.2rem; font: inherit; } #budget { width: 8rem; }
#about { margin: .4rem 0 0; color: #444; } code { background: #f0f0f0; padding: 0 .2rem; }
.scores { display: grid; grid-template-columns: max-content 1fr max-content; gap: .35rem .8rem; align-items: center; }
.track { background: #e6ebf4; height: .9rem; } .bar { background: #4a7bd0; height: 100%; min-width: 1px; }
.score { font-variant-numeric: tabular-nums; color: #444; }
.error { color: #b00020; } .status { color: #555; font-size: 90%; }
pre { white-space: pre-wrap; background: #f4f4f4; padding: .6rem; }
</style></head>
<body>
<h1>ptune playground</h1>
<label for="key">API key (if the server needs one)</label><input id="key" type="password" autocomplete="off">
<label for="task">Task</label><select id="task"></select>
<div id="about"></div>
<form id="form"><div id="fields"></div>
<label for="budget" id="budget-label">Max new tokens</label><input id="budget" type="number" min="1" value="32">
<button type="submit">Run</button></form>
<div id="out"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let tasks = {};
let loads = 0;  // answers to an older load() are dropped
let loadedWith = null;  // the key the tasks were listed with
$("key").value = sessionStorage.getItem("ptune-key") || "";
$("key").addEventListener("change", () => {
  sessionStorage.setItem("ptune-key", key());
  if (key() !== loadedWith) load();
});

function key() { return $("key").value.trim(); }

function headers() {
  const h = {"Content-Type": "application/json"};
  if (key()) h["Authorization"] = "Bearer " + key();
  return h;
}

function show(...nodes) { $("out").replaceChildren(...nodes); }

function text(tag, content, cls) {
  const el = document.createElement(tag);
  el.textContent = content;
  if (cls) el.className = cls;
  return el;
}

function failed(status, error) {
  if (status === 401) return text("p", "This server needs an API key: type it in the field above.", "error");
  const message = typeof error === "string" ? error : (error && error.message) || JSON.stringify(error);
  return text("p", message, "error");
}

async function load() {
  const mine = ++loads;
  loadedWith = key();
  const r = await fetch("/v1/tasks", {headers: headers()});
  const body = await r.json();
  if (mine !== loads) return;
  const current = $("task").value;
  tasks = r.ok ? Object.fromEntries(body.tasks.map((t) => [t.name, t])) : {};
  $("task").replaceChildren(...Object.values(tasks).map((t) => {
    const option = text("option", t.name + " (" + t.type + ")");
    option.value = t.name;
    return option;
  }));
  if (tasks[current]) $("task").value = current;
  show(...(r.ok ? [] : [failed(r.status, body.error)]));
  pick();
}

function pick() {
  const t = tasks[$("task").value];
  $("form").hidden = !t;
  $("about").replaceChildren();
  if (!t) return;
  $("about").append("Template ", text("code", t.template));
  if (t.labels) $("about").append(" \u00b7 labels ", ...t.labels.flatMap((l, i) => [i ? ", " : "", text("code", l)]));
  const typed = row();  // what was typed stays in fields of the same name
  $("fields").replaceChildren(...t.fields.flatMap((f, i) => {
    const area = document.createElement("textarea");
    area.name = f; area.id = "field-" + i; area.rows = 3; area.required = true; area.value = typed[f] || "";
    const label = text("label", f);
    label.htmlFor = area.id;
    return [label, area];
  }));
  const generate = t.type === "generation";
  $("budget").hidden = $("budget-label").hidden = !generate;
  if (generate && t.max_new_tokens) $("budget").value = t.max_new_tokens;
}

function row() {
  return Object.fromEntries([...$("fields").querySelectorAll("textarea")].map((a) => [a.name, a.value]));
}

async function classify(t) {
  const r = await fetch("/v1/classify", {method: "POST", headers: headers(),
                                          body: JSON.stringify({task: t.name, rows: [row()]})});
  const body = await r.json();
  if (!r.ok) { show(failed(r.status, body.error)); return; }
  const p = body.predictions[0];
  const scores = Object.entries(p.scores).sort((a, b) => b[1] - a[1]);
  // bars: each label's share of the labels' probability (a softmax of the scores, which are log-likelihoods)
  const top = scores.length ? scores[0][1] : 0;
  const total = scores.reduce((sum, [, s]) => sum + Math.exp(s - top), 0);
  const grid = text("div", "", "scores");
  for (const [label, score] of scores) {
    const share = Math.exp(score - top) / total;
    const track = text("div", "", "track");
    const bar = text("div", "", "bar");
    bar.style.width = (100 * share).toFixed(1) + "%";
    track.append(bar);
    grid.append(text("span", label, "name"), track,
                text("span", score.toFixed(3) + "  (" + (100 * share).toFixed(1) + "%)", "score"));
  }
  show(text("h2", p.label), grid);
}

async function generate(t) {
  const fields = row();
  const content = t.fields.length === 1 ? fields[t.fields[0]] : JSON.stringify(fields);
  const r = await fetch("/v1/chat/completions", {method: "POST", headers: headers(), body: JSON.stringify({
    model: t.name, stream: true, max_tokens: Number($("budget").value),
    messages: [{role: "user", content: content}]})});
  if (!r.ok) { show(failed(r.status, (await r.json()).error)); return; }
  const pre = text("pre", "");
  show(pre);
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", reason = null;
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    const events = buffer.split("\\n\\n");
    buffer = events.pop();
    for (const event of events) {
      const data = event.replace(/^data: /, "");
      if (data === "[DONE]") {
        const why = reason === "length" ? "the token budget ran out" : "end of text";
        $("out").append(text("p", "Finished: " + why + (pre.textContent ? "." : " (no text generated)."), "status"));
        return;
      }
      const chunk = JSON.parse(data);
      if (chunk.error) { $("out").append(text("p", chunk.error.message, "error")); return; }
      for (const c of chunk.choices) {
        pre.textContent += c.delta.content || "";
        reason = c.finish_reason || reason;
      }
    }
  }
}

$("task").addEventListener("change", pick);
$("form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const t = tasks[$("task").value];
  if (!t) return;
  const button = $("form").querySelector("button");
  button.disabled = true;  // one request at a time from this page
  try {
    await (t.type === "generation" ? generate(t) : classify(t));
  } catch (err) {
    show(text("p", String(err), "error"));
  } finally {
    button.disabled = false;
  }
});
load();
</script>
</body></html>
"""


def add_playground(app: FastAPI) -> None:
    """``GET /`` and ``GET /playground``: the page above."""

    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    @app.get("/playground", include_in_schema=False, response_class=HTMLResponse)
    async def playground():
        return HTMLResponse(PAGE)
