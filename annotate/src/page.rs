//! The annotation page: one static HTML document with inline CSS and JS (no build step, no
//! external requests). Text from the tables is inserted with `textContent`, never as HTML.

pub const PAGE: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>alignflow annotate: {{TITLE}}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f6f6f4;color:#222}
header{display:flex;gap:1em;align-items:center;padding:.5em 1em;background:#fff;border-bottom:1px solid #ddd}
header .grow{flex:1} main{padding:1em;max-width:1400px;margin:auto}
#prompt{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.7em 1em;white-space:pre-wrap}
.turn{margin:.2em 0}.role{font-weight:600;margin-right:.4em}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1em;margin:1em 0}
.resp{background:#fff;border:2px solid #ddd;border-radius:6px;padding:.7em 1em;white-space:pre-wrap;cursor:pointer}
.resp.on{border-color:#2a7;background:#f0fbf5} .resp h3{margin:0 0 .4em;font-size:14px;color:#666}
.row{display:flex;flex-wrap:wrap;gap:.4em;align-items:center;margin:.5em 0}.row b{width:7em}
button{font:inherit;padding:.35em .8em;border:1px solid #bbb;border-radius:5px;background:#fff;cursor:pointer}
button.on{background:#2a7;color:#fff;border-color:#2a7} kbd{font-size:11px;color:#888;margin-left:.3em}
#submit{background:#246;color:#fff;border-color:#246} #msg{color:#a33;min-height:1.4em} #done{display:none}
</style></head><body>
<header><strong>alignflow annotate</strong><span class="grow">{{TITLE}}</span>
<span id="progress" data-done="0" data-remaining="0">&nbsp;</span>
<label>annotator <input id="annotator" size="12" maxlength="64"></label></header>
<main>
<div id="work">
<div id="prompt"></div>
<div class="pair">
 <div class="resp" id="left"><h3>Left <kbd>1 / &larr;</kbd></h3><div class="text"></div></div>
 <div class="resp" id="right"><h3>Right <kbd>2 / &rarr;</kbd></h3><div class="text"></div></div>
</div>
<div class="row"><b>Better</b>
 <button id="pick-left" data-pick="left">Left is better<kbd>1</kbd></button>
 <button id="pick-right" data-pick="right">Right is better<kbd>2</kbd></button></div>
<div class="row"><b>By how much</b>
 <button data-rating="significantly_better" id="r-significantly_better">significantly better<kbd>a</kbd></button>
 <button data-rating="better" id="r-better">better<kbd>s</kbd></button>
 <button data-rating="slightly_better" id="r-slightly_better">slightly better<kbd>d</kbd></button>
 <button data-rating="negligibly_better" id="r-negligibly_better">negligibly better / unsure<kbd>f</kbd></button></div>
<div class="row"><b>Safety</b>
 <button data-unsafe="none" id="s-none">both safe<kbd>z</kbd></button>
 <button data-unsafe="left" id="s-left">left unsafe<kbd>x</kbd></button>
 <button data-unsafe="right" id="s-right">right unsafe<kbd>c</kbd></button>
 <button data-unsafe="both" id="s-both">both unsafe<kbd>v</kbd></button></div>
<div class="row"><button id="submit">Submit<kbd>Enter</kbd></button>
 <button id="skip">Skip<kbd>k</kbd></button></div>
</div>
<div id="done"><p id="done-text">Nothing left to annotate.</p><button id="revisit">Show skipped pairs again</button></div>
<p id="msg"></p>
</main>
<script>
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
const client = "c" + Math.random().toString(36).slice(2, 12);
const $ = (id) => document.getElementById(id);
let cur = null, pick = null, rating = null, unsafeSide = "none", skipped = [], busy = false;
const nameBox = $("annotator");
nameBox.value = localStorage.getItem("alignflow-annotator") || "anonymous";
nameBox.addEventListener("change", () => localStorage.setItem("alignflow-annotator", nameBox.value));
function msg(t) { $("msg").textContent = t || ""; }
async function api(path, opts) {
  opts = opts || {};
  opts.headers = Object.assign({"x-annotate-token": token}, opts.headers || {});
  const r = await fetch(path, opts);
  let j = {};
  try { j = await r.json(); } catch (e) {}
  return [r.status, j];
}
function showProgress(p) {
  const el = $("progress");
  el.textContent = p.done + " done / " + p.remaining + " remaining";
  el.dataset.done = p.done; el.dataset.remaining = p.remaining;
}
function render() {
  $("work").style.display = cur ? "" : "none";
  $("done").style.display = cur ? "none" : "block";
  if (!cur) {
    $("done-text").textContent = skipped.length ? "Nothing left except " + skipped.length + " skipped pair(s)." : "Nothing left to annotate.";
    $("revisit").style.display = skipped.length ? "" : "none";
    return;
  }
  const pr = $("prompt"); pr.textContent = "";
  if (Array.isArray(cur.dialogue)) {
    for (const m of cur.dialogue) {
      const d = document.createElement("div"); d.className = "turn";
      const r = document.createElement("span"); r.className = "role"; r.textContent = String(m.role || "") + ":";
      d.appendChild(r); d.appendChild(document.createTextNode(String(m.content || ""))); pr.appendChild(d);
    }
  } else { pr.textContent = cur.prompt; }
  document.querySelector("#left .text").textContent = cur.left.text;
  document.querySelector("#right .text").textContent = cur.right.text;
  $("work").dataset.pair = cur.id;
  sync();
}
function sync() {
  $("left").classList.toggle("on", pick === "left"); $("right").classList.toggle("on", pick === "right");
  document.querySelectorAll("[data-pick]").forEach(b => b.classList.toggle("on", b.dataset.pick === pick));
  document.querySelectorAll("[data-rating]").forEach(b => b.classList.toggle("on", b.dataset.rating === rating));
  document.querySelectorAll("[data-unsafe]").forEach(b => b.classList.toggle("on", b.dataset.unsafe === unsafeSide));
}
async function load() {
  const [st, j] = await api("/api/next?client=" + client + "&skip=" + encodeURIComponent(skipped.join(",")));
  if (st !== 200) { msg(j.error || ("error " + st)); return; }
  showProgress(j);
  cur = j.pair; pick = null; rating = null; unsafeSide = "none";
  render();
}
async function submit() {
  if (!cur || busy) return;
  if (!pick) { msg("Choose the better response (1 or 2)."); return; }
  if (!rating) { msg("Choose by how much (a, s, d or f)."); return; }
  const side = (s) => cur[s].key;
  const unsafe = unsafeSide === "none" ? "none" : unsafeSide === "both" ? "both" : side(unsafeSide);
  const body = {pair_id: cur.id, choice: side(pick), rating: rating, unsafe: unsafe, annotator: nameBox.value || "anonymous"};
  busy = true;
  try {
    const [st, j] = await api("/api/answer", {method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(body)});
    if (st === 200) { msg(""); showProgress(j); await load(); }
    else if (st === 409) { msg("Someone else answered that pair; here is another."); await load(); }
    else { msg(j.error || ("error " + st)); }
  } finally { busy = false; }
}
async function skip() { if (!cur) return; skipped.push(cur.id); msg(""); await load(); }
document.querySelectorAll("[data-pick]").forEach(b => b.addEventListener("click", () => { pick = b.dataset.pick; sync(); }));
$("left").addEventListener("click", () => { pick = "left"; sync(); });
$("right").addEventListener("click", () => { pick = "right"; sync(); });
document.querySelectorAll("[data-rating]").forEach(b => b.addEventListener("click", () => { rating = b.dataset.rating; sync(); }));
document.querySelectorAll("[data-unsafe]").forEach(b => b.addEventListener("click", () => { unsafeSide = b.dataset.unsafe; sync(); }));
$("submit").addEventListener("click", submit);
$("skip").addEventListener("click", skip);
$("revisit").addEventListener("click", () => { skipped = []; load(); });
const keys = {"1": ["pick", "left"], "ArrowLeft": ["pick", "left"], "2": ["pick", "right"], "ArrowRight": ["pick", "right"],
  "a": ["rating", "significantly_better"], "s": ["rating", "better"], "d": ["rating", "slightly_better"], "f": ["rating", "negligibly_better"],
  "z": ["unsafe", "none"], "x": ["unsafe", "left"], "c": ["unsafe", "right"], "v": ["unsafe", "both"]};
document.addEventListener("keydown", (e) => {
  if (e.target === nameBox || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === "Enter") { e.preventDefault(); submit(); return; }
  if (e.key === "k") { skip(); return; }
  const k = keys[e.key]; if (!k || !cur) return;
  if (k[0] === "pick") pick = k[1]; else if (k[0] === "rating") rating = k[1]; else unsafeSide = k[1];
  sync();
});
load();
</script></body></html>
"##;
