"""``/playground``: one self-contained page (no external scripts, styles or fonts) to try the served tasks from a
browser: pick a task, fill its fields, see the label with every label's score, or the generated text streamed as
it is produced (through ``/v1/chat/completions``). With API keys set, the page's own calls send the key typed into
it (kept in the tab's session storage); loading the page itself needs the key like every endpoint but ``/health``.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ptune playground</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 15px/1.4 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
label { display: block; margin-top: .8rem; font-weight: 600; }
textarea, input, select { width: 100%; box-sizing: border-box; font: inherit; padding: .3rem; }
button { margin-top: 1rem; padding: .4rem 1.2rem; font: inherit; }
.bar { background: #4a7bd0; height: .8rem; display: inline-block; vertical-align: middle; }
.row { margin: .2rem 0; } .error { color: #b00020; } pre { white-space: pre-wrap; background: #f4f4f4; padding: .6rem; }
</style></head>
<body>
<h1>ptune playground</h1>
<label for="key">API key (if the server needs one)</label><input id="key" type="password" autocomplete="off">
<label for="task">Task</label><select id="task"></select>
<p id="about"></p>
<form id="form"><div id="fields"></div>
<label for="budget" id="budget-label">Max new tokens</label><input id="budget" type="number" min="1" value="32">
<button type="submit">Run</button></form>
<div id="out"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let tasks = {};
$("key").value = sessionStorage.getItem("ptune-key") || "";
$("key").addEventListener("change", () => { sessionStorage.setItem("ptune-key", $("key").value); load(); });

function headers() {
  const h = {"Content-Type": "application/json"};
  if ($("key").value) h["Authorization"] = "Bearer " + $("key").value;
  return h;
}

function show(node) { $("out").replaceChildren(node); }

function text(tag, content, cls) {
  const el = document.createElement(tag);
  el.textContent = content;
  if (cls) el.className = cls;
  return el;
}

async function load() {
  const r = await fetch("/v1/tasks", {headers: headers()});
  const body = await r.json();
  if (!r.ok) { show(text("p", JSON.stringify(body.error), "error")); return; }
  tasks = Object.fromEntries(body.tasks.map((t) => [t.name, t]));
  $("task").replaceChildren(...body.tasks.map((t) => text("option", t.name + " (" + t.type + ")")));
  body.tasks.forEach((t, i) => { $("task").options[i].value = t.name; });
  pick();
}

function pick() {
  const t = tasks[$("task").value];
  if (!t) return;
  $("about").textContent = "Template: " + t.template + (t.labels ? "  Labels: " + t.labels.join(", ") : "");
  $("fields").replaceChildren(...t.fields.flatMap((f) => {
    const area = document.createElement("textarea");
    area.name = f; area.rows = 3; area.required = true;
    return [text("label", f), area];
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
  if (!r.ok) { show(text("p", body.error, "error")); return; }
  const p = body.predictions[0];
  const scores = Object.entries(p.scores).sort((a, b) => b[1] - a[1]);
  const top = scores.length ? scores[0][1] : 0;
  const box = document.createElement("div");
  box.append(text("h2", p.label));
  for (const [label, score] of scores) {
    const line = text("div", "", "row");
    const bar = text("span", "", "bar");
    bar.style.width = (Math.exp(score - top) * 20).toFixed(2) + "rem";
    line.append(bar, " " + label + "  " + score.toFixed(3));
    box.append(line);
  }
  show(box);
}

async function generate(t) {
  const fields = row();
  const content = t.fields.length === 1 ? fields[t.fields[0]] : JSON.stringify(fields);
  const r = await fetch("/v1/chat/completions", {method: "POST", headers: headers(), body: JSON.stringify({
    model: t.name, stream: true, max_tokens: Number($("budget").value),
    messages: [{role: "user", content: content}]})});
  if (!r.ok) { show(text("p", JSON.stringify((await r.json()).error), "error")); return; }
  const pre = text("pre", "");
  show(pre);
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    const events = buffer.split("\\n\\n");
    buffer = events.pop();
    for (const event of events) {
      const data = event.replace(/^data: /, "");
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) { $("out").append(text("p", chunk.error.message, "error")); return; }
      for (const c of chunk.choices) pre.textContent += c.delta.content || "";
    }
  }
}

$("task").addEventListener("change", pick);
$("form").addEventListener("submit", (e) => {
  e.preventDefault();
  const t = tasks[$("task").value];
  if (t) (t.type === "generation" ? generate(t) : classify(t)).catch((err) => show(text("p", err, "error")));
});
load();
</script>
</body></html>
"""


def add_playground(app: FastAPI) -> None:
    """``GET /playground``: the page above."""

    @app.get("/playground", include_in_schema=False, response_class=HTMLResponse)
    async def playground():
        return HTMLResponse(PAGE)
