"""The web panel's stylesheet and script, served from the package (no CDN: it works offline).

They live here as strings, not as files under ``daemon/``, so a wheel needs no
package-data entry for them. The page's Content-Security-Policy allows only
scripts and styles from the panel itself, which is why they are served as
``/static/panel.css`` and ``/static/panel.js`` rather than inlined.

The script does two things and degrades to plain forms without them:
- polls the page's own URL every ``data-poll-ms`` with ``X-Tandava-Fetch: 1``
  and swaps in the new ``<main>`` when the ``X-Tandava-Version`` header
  (a hash of it) changed, so a page that did not change is not re-drawn;
- turns each action form into a fetch POST and shows the answer (or the
  reason it was refused) in a banner, then refreshes at once.
"""

from __future__ import annotations

CSS = """\
:root { color-scheme: light dark; --bg: #f7f6f2; --fg: #1d1d1b; --muted: #66655f;
  --card: #fff; --line: #d9d7cf; --accent: #a8401a; --ok: #2e7d32; --bad: #b3261e; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #151513; --fg: #eceae4; --muted: #a3a29b; --card: #201f1c; --line: #3a3935;
    --accent: #f08a5d; --ok: #81c784; --bad: #ef9a9a; } }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 16px/1.45 system-ui, -apple-system, "Segoe UI", "Noto Sans", "Noto Sans Devanagari",
    sans-serif; }
a { color: var(--accent); }
header.top { display: flex; flex-wrap: wrap; gap: .25rem 1rem; align-items: baseline;
  padding: .75rem 1rem; border-bottom: 1px solid var(--line); }
.brand { font-weight: 700; font-size: 1.25rem; text-decoration: none; }
.sub, small, .meta, .hint { color: var(--muted); }
main { padding: 1rem; max-width: 1200px; margin: 0 auto; }
h1 { font-size: 1.5rem; margin: .25rem 0; }
h2 { font-size: 1.15rem; margin: 1.25rem 0 .5rem; }
summary > h2 { display: inline-block; cursor: pointer; }
h3 { font-size: 1rem; margin: 0; }
.wrap, h1, h3, .meta, .progress li, code, .prompt { overflow-wrap: anywhere; }
.grid { display: grid; gap: 1rem; grid-template-columns: repeat(auto-fill, minmax(min(100%, 15rem), 1fr)); }
.card, .cand, .box { background: var(--card); border: 1px solid var(--line); border-radius: .6rem; }
.card { display: flex; flex-direction: column; overflow: hidden; }
.pic { text-decoration: none; }
.card .body { padding: .75rem; display: flex; flex-direction: column; gap: .35rem; flex: 1; }
.card p { margin: 0; }
.pic img, .cand img, .noimg { display: block; width: 100%; height: auto; aspect-ratio: 16 / 9;
  object-fit: cover; background: var(--line); }
.noimg { display: flex; align-items: center; justify-content: center; font-size: 2rem;
  color: var(--muted); }
.progress { margin: 0; padding-left: 1.1rem; font-size: .9rem; color: var(--muted); }
.actions { display: flex; flex-wrap: wrap; gap: .5rem; margin-top: auto; padding-top: .35rem; }
.actions form, .act { margin: 0; display: inline-flex; flex-wrap: wrap; gap: .5rem; }
button, .btn { display: inline-flex; align-items: center; justify-content: center;
  min-height: 44px; min-width: 44px; padding: .5rem 1rem; border-radius: .5rem;
  border: 1px solid var(--line); background: var(--card); color: var(--fg); font: inherit;
  text-decoration: none; cursor: pointer; }
button.primary, .btn.primary { background: var(--accent); border-color: var(--accent);
  color: #fff; font-weight: 600; }
button:disabled { opacity: .5; cursor: progress; }
.counts { display: flex; flex-wrap: wrap; gap: .5rem; }
.chip { padding: .35rem .7rem; border: 1px solid var(--line); border-radius: 1rem;
  text-decoration: none; color: var(--fg); background: var(--card); font-size: .9rem; }
.badge { display: inline-block; padding: .1rem .5rem; border-radius: .8rem; font-size: .8rem;
  border: 1px solid var(--line); color: var(--fg); font-weight: 600; vertical-align: middle; }
.s-approved, .c-approved { border-color: var(--ok); color: var(--ok); }
.s-failed, .c-rejected { border-color: var(--bad); color: var(--bad); }
.err { color: var(--bad); }
.box { padding: 1rem; margin: 1rem 0; }
.box h1, .box h2 { margin-top: 0; }
.bar { display: flex; flex-wrap: wrap; gap: .75rem; align-items: center; justify-content: space-between; }
.segment { border-top: 1px solid var(--line); margin-top: 1rem; }
.cand { margin: 0; overflow: hidden; }
.cand.c-approved { outline: 3px solid var(--ok); }
.cand.c-rejected img { opacity: .45; }
.cand figcaption { padding: .5rem; display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; }
.regen { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; margin: .75rem 0; }
video { display: block; width: 100%; max-height: 80vh; background: #000; border-radius: .5rem; }
.flash { position: sticky; top: 0; z-index: 2; margin: 0; padding: .75rem 1rem;
  background: var(--card); border-bottom: 2px solid var(--ok); }
.flash.bad { border-color: var(--bad); color: var(--bad); }
.empty, .more { margin: 1rem 0; }
"""

# The tab icon: a trident in the accent colour (an SVG, so no binary file in the package).
ICON = """\
<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">
<rect width="32" height="32" rx="7" fill="#a8401a"/>
<path d="M16 4v24M9 8v6a7 7 0 0 0 14 0V8M16 4l-2 4h4z" stroke="#fff" stroke-width="2.5"
 fill="none" stroke-linecap="round" stroke-linejoin="round"/>
</svg>
"""

JS = """\
"use strict";
(() => {
  const live = document.getElementById("live");
  const flash = document.getElementById("flash");
  if (!live) return;
  const every = Number(live.dataset.pollMs || 0);
  const asFetch = { "X-Tandava-Fetch": "1" };
  let acting = false;

  function say(text, bad) {
    flash.textContent = text || "";
    flash.className = bad ? "flash bad" : "flash";
    flash.hidden = !text;
  }

  async function refresh() {
    try {
      const r = await fetch(location.pathname + location.search,
        { headers: asFetch, cache: "no-store", credentials: "same-origin" });
      const version = r.headers.get("X-Tandava-Version");
      if (r.ok && version && version !== live.dataset.version) {
        live.innerHTML = await r.text();
        live.dataset.version = version;
      }
    } catch (err) {
      // The daemon is restarting or the network is away: the next tick tries again.
    }
  }

  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (!(form instanceof HTMLFormElement) || !form.classList.contains("act")) return;
    ev.preventDefault();
    const button = ev.submitter;
    const body = new URLSearchParams(new FormData(form));
    // The clicked button says which verdict (FormData's submitter argument is too new for some phones).
    if (button && button.name) body.set(button.name, button.value);
    form.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    acting = true;
    try {
      const r = await fetch(form.action,
        { method: "POST", body, headers: asFetch, credentials: "same-origin" });
      const answer = await r.json().catch(() => ({}));
      say(answer.message || answer.error || (r.ok ? "" : "refused (" + r.status + ")"), !r.ok);
    } catch (err) {
      say("The panel did not answer: is the daemon running?", true);
    }
    acting = false;
    await refresh();
    form.querySelectorAll("button").forEach((b) => { b.disabled = false; });
  });

  if (every > 0) {
    setInterval(() => { if (!document.hidden && !acting) refresh(); }, every);
  }
})();
"""
