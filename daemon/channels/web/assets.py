"""The web panel's stylesheet and icon, served from the package (no CDN: it works offline).

They live here as strings, not as files under ``daemon/``, so a wheel needs no
package-data entry for them. The page's Content-Security-Policy allows only
scripts and styles from the panel itself, which is why they are served as
``/static/panel.css`` (and the script, ``script.py``, as ``/static/panel.js``)
rather than inlined.

Both colour schemes meet WCAG AA: text at least 4.5:1 against its background,
and the edges of controls (``--control``) and the focus ring at least 3:1.
Text on the accent colour is white in the light scheme and near-black in the
dark one, where the accent is light. Focus is always visible (author
``:focus-visible`` styles); on pictures inside clipped boxes the ring is
drawn inset, so ``overflow: hidden`` cannot cut it off.
"""

from __future__ import annotations

CSS = """\
:root { color-scheme: light dark; --bg: #f7f6f2; --fg: #1d1d1b; --muted: #66655f;
  --card: #fff; --line: #d9d7cf; --control: #7a7870; --accent: #a8401a; --on-accent: #fff;
  --ok: #2e7d32; --bad: #b3261e; --focus: #1a56db; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #151513; --fg: #eceae4; --muted: #a3a29b; --card: #201f1c; --line: #3a3935;
    --control: #858379; --accent: #f08a5d; --on-accent: #151513; --ok: #81c784; --bad: #ef9a9a;
    --focus: #8ab4ff; } }
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
  border: 1px solid var(--control); background: var(--card); color: var(--fg); font: inherit;
  text-decoration: none; cursor: pointer; }
button.primary, .btn.primary { background: var(--accent); border-color: var(--accent);
  color: var(--on-accent); font-weight: 600; }
button:disabled { opacity: .5; cursor: progress; }
/* An action inside a sentence (a waiting reason, a hint): a small button in the line. */
.act.inline { display: inline; }
.act.inline button, a.inline { display: inline-block; min-height: 0; min-width: 0; margin: .1rem 0;
  padding: .05rem .45rem; border: 1px solid var(--line); border-radius: .4rem; background: var(--card);
  color: var(--fg); font: inherit; line-height: 1.4; text-decoration: none; vertical-align: baseline; }
@media (pointer: coarse) { .act.inline button, a.inline { min-height: 44px; min-width: 44px; } }
.hint { margin: 1rem 0; }
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
.empty-chip { color: var(--muted); }
:focus-visible { outline: 3px solid var(--focus); outline-offset: 2px; }
/* Inside boxes that clip (overflow: hidden), the ring is drawn inside the element. */
.pic:focus-visible, .cand a.full:focus-visible, .cand:focus-visible { outline-offset: -4px; }
.cand a.full { display: block; }
.sr-only { position: absolute; width: 1px; height: 1px; padding: 0; margin: -1px; overflow: hidden;
  clip: rect(0 0 0 0); white-space: nowrap; border: 0; }
.skip { position: absolute; left: -100vw; }
.skip:focus { position: static; display: inline-block; margin: .5rem 0; padding: .5rem 1rem;
  background: var(--card); border: 2px solid var(--focus); }
.count { margin: 0; }
.review h2 { margin-top: .5rem; }
.review audio { width: 100%; margin: .25rem 0 .75rem; }
.cands.big { display: grid; gap: 1rem;
  grid-template-columns: repeat(auto-fit, minmax(min(100%, 18rem), 1fr)); }
.cand[tabindex="0"] { box-shadow: 0 0 0 2px var(--control); }
.moves { display: flex; flex-wrap: wrap; gap: .5rem; margin: 1rem 0; align-items: center; }
.keys { margin: 1rem 0; }
.keys dl { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; }
.keys dt, .keys dd { margin: 0; }
kbd { font: .9rem ui-monospace, monospace; padding: .05rem .35rem; border: 1px solid var(--control);
  border-radius: .3rem; }
.flash button { min-height: 36px; margin-left: .5rem; }
"""

# The tab icon: a trident in the accent colour (an SVG, so no binary file in the package).
ICON = """\
<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">
<rect width="32" height="32" rx="7" fill="#a8401a"/>
<path d="M16 4v24M9 8v6a7 7 0 0 0 14 0V8M16 4l-2 4h4z" stroke="#fff" stroke-width="2.5"
 fill="none" stroke-linecap="round" stroke-linejoin="round"/>
</svg>
"""
