"""The web panel's script: live updates that keep your place, and review by keyboard and touch.

How this works: every page works without it (plain forms and links); the
script only makes it faster and keeps a person's place.
- **Live updates** poll the page's own URL (``X-Tandava-Fetch: 1``) and, when
  the version header changed, *patch* ``<main>`` node by node (a small
  morph keyed by element ids) instead of replacing it, so focus, scroll
  position, a playing ``<audio>`` and a screen reader's place survive. A
  candidate whose state changed elsewhere is announced once in the polite
  ``#announce`` region ("segment 20: candidate 1 rejected on Telegram").
- **Actions** are fetch POSTs; the answer is shown in ``#flash`` with an Undo
  button for 10 s after an approve or reject. In review mode the answer names
  the next open segment: the script patches the page to it and puts focus on
  its first candidate, so deciding takes one key per segment.
- **Keys** (review mode): 1–4 or arrows choose, A or Enter approves, X rejects,
  R asks for new candidates, J/K or PageDown/PageUp move, U undoes, ? toggles
  the list. **Swipes** on a candidate: right approves, left rejects.
- "Approve all" asks once with the question its form carries.
It is served as ``/static/panel.js`` (the Content-Security-Policy allows no inline script).
"""

from __future__ import annotations

# How long an Undo is offered after a decision (the store accepts a little longer).
UNDO_MS = 10_000

JS = """\
"use strict";
(() => {
  const live = document.getElementById("live");
  const flash = document.getElementById("flash");
  const announcer = document.getElementById("announce");
  if (!live) return;
  const every = Number(live.dataset.pollMs || 0);
  const asFetch = { "X-Tandava-Fetch": "1" };
  const csrf = (document.querySelector("meta[name=csrf-token]") || {}).content || "";
  const CHANNELS = { web: "in the panel", telegram: "on Telegram", cli: "from the command line",
                     auto: "by the auto policy", api: "through the API" };
  const UNDO_MS = __UNDO_MS__;
  const own = new Map();  // "segment-candidate" -> when this page decided it (not announced)
  let acting = false;
  let lastDecision = null;
  let undoTimer = 0;

  // ---- patching main without losing focus ---------------------------------------------
  function same(a, b) {
    return a.nodeType === b.nodeType && a.nodeName === b.nodeName &&
      (a.nodeType !== 1 || (a.id || "") === (b.id || ""));
  }
  function morphAttributes(from, to) {
    for (const attr of [...from.attributes]) {
      if (!to.hasAttribute(attr.name)) from.removeAttribute(attr.name);
    }
    for (const attr of [...to.attributes]) {
      if (from.getAttribute(attr.name) !== attr.value) from.setAttribute(attr.name, attr.value);
    }
  }
  function morphChildren(from, to) {
    const olds = [...from.childNodes];
    const news = [...to.childNodes];
    news.forEach((node, i) => {
      const old = olds[i];
      if (!old) { from.appendChild(node.cloneNode(true)); return; }
      if (!same(old, node)) { from.replaceChild(node.cloneNode(true), old); return; }
      if (old.nodeType === 1) {
        // A disclosure the person opened stays open; its "open" is theirs, not the server's.
        const keepOpen = old.nodeName === "DETAILS" && old.open;
        morphAttributes(old, node);
        if (keepOpen) old.open = true;
        morphChildren(old, node);
      } else if (old.nodeValue !== node.nodeValue) {
        old.nodeValue = node.nodeValue;
      }
    });
    for (let i = news.length; i < olds.length; i++) from.removeChild(olds[i]);
  }
  function statuses(root) {
    const found = new Map();
    root.querySelectorAll("figure.cand").forEach((f) => {
      found.set(f.dataset.segment + "-" + f.dataset.candidate, [f.dataset.status, f.dataset.channel]);
    });
    // Review mode also lists the candidates of segments it is not showing.
    root.querySelectorAll("[data-cand]").forEach((s) => {
      found.set(s.dataset.cand, [s.dataset.status, s.dataset.channel]);
    });
    return found;
  }
  function patch(html) {
    const next = document.createElement("main");
    next.innerHTML = html;
    const before = statuses(live);
    const focused = document.activeElement;
    const focusId = focused && focused !== document.body ? focused.id : "";
    const focusFigure = focused && focused.closest ? focused.closest("figure.cand") : null;
    const focusValue = focused && focused.value;
    morphChildren(live, next);
    if (document.activeElement === document.body || !document.activeElement) {
      const again = (focusId && document.getElementById(focusId)) ||
        (focusFigure && document.getElementById(focusFigure.id) &&
         (document.getElementById(focusFigure.id).querySelector(
           "button[value='" + focusValue + "']") || document.getElementById(focusFigure.id)));
      if (again) again.focus({ preventScroll: true });
    }
    keepRoving();
    const now = Date.now();
    statuses(live).forEach(([status, channel], key) => {
      const was = before.get(key);
      if (!was || was[0] === status) return;
      if (own.has(key) && now - own.get(key) < 15000) return;
      const [segment, candidate] = key.split("-");
      const words = status === "open" ? "back to undecided" : status;
      announce("segment " + segment + ": candidate " + candidate + " " + words + " " +
               (CHANNELS[channel] || "elsewhere"));
    });
  }
  function announce(text) {
    if (!announcer) return;
    announcer.textContent = "";
    window.setTimeout(() => { announcer.textContent = text; }, 50);
  }

  async function refresh(url) {
    try {
      const target = url || location.pathname + location.search;
      const r = await fetch(target, { headers: asFetch, cache: "no-store", credentials: "same-origin" });
      const version = r.headers.get("X-Tandava-Version");
      if (r.ok && version && (url || version !== live.dataset.version)) {
        patch(await r.text());
        live.dataset.version = version;
        if (url) history.replaceState(null, "", url);
      }
      return r.ok;
    } catch (err) {
      return false;  // the daemon is restarting or the network is away: the next tick tries again
    }
  }

  // ---- review mode: the chosen candidate -------------------------------------------------
  function review() { return document.getElementById("review"); }
  function figures() { const r = review(); return r ? [...r.querySelectorAll("figure.cand")] : []; }
  function chosen() {
    const active = document.activeElement;
    const inFigure = active && active.closest ? active.closest("#review figure.cand") : null;
    return inFigure || figures().find((f) => f.tabIndex === 0) || figures()[0] || null;
  }
  function choose(figure) {
    if (!figure) return;
    figures().forEach((f) => { f.tabIndex = f === figure ? 0 : -1; });
    figure.focus();
  }
  function keepRoving() {
    const active = document.activeElement;
    const figure = active && active.closest ? active.closest("#review figure.cand") : null;
    if (figure) figures().forEach((f) => { f.tabIndex = f === figure ? 0 : -1; });
  }
  function focusReview() {
    const first = figures().find((f) => f.tabIndex === 0) || figures()[0];
    const done = document.getElementById("done");
    const target = done || first || review() || document.querySelector("#live h1");
    if (target) target.focus();
  }
  function submitVerdict(figure, verdict) {
    if (!figure) return;
    const button = figure.querySelector("button[value='" + verdict + "']");
    if (button) button.form.requestSubmit(button);
  }

  // ---- actions ---------------------------------------------------------------------------
  function say(text, bad, undo) {
    flash.textContent = text || "";
    flash.className = bad ? "flash bad" : "flash";
    flash.hidden = !text;
    window.clearTimeout(undoTimer);
    if (undo) {
      const button = document.createElement("button");
      button.type = "button";
      button.id = "undo";
      button.textContent = "Undo";
      button.setAttribute("aria-label", "Undo: " + text);
      button.addEventListener("click", () => undoLast());
      flash.append(" ", button);
      undoTimer = window.setTimeout(() => { button.remove(); lastDecision = null; }, UNDO_MS);
    }
  }
  async function post(action, body) {
    body.set("csrf", csrf);
    const r = await fetch(action, { method: "POST", body, headers: asFetch, credentials: "same-origin" });
    const answer = await r.json().catch(() => ({}));
    return [r, answer];
  }
  async function after(answer) {
    const here = review();
    if (here && answer.next !== undefined && answer.next !== null) {
      const url = location.pathname + "?segment=" + answer.next;
      await refresh(url);
      focusReview();
    } else {
      await refresh();
      if (here && !review()) focusReview();
    }
  }
  async function undoLast() {
    if (!lastDecision || Date.now() - lastDecision.at > UNDO_MS) return;
    const { action, segment, candidate } = lastDecision;
    lastDecision = null;
    const body = new URLSearchParams({ verdict: "undo", segment, candidate });
    own.set(segment + "-" + candidate, Date.now());
    acting = true;
    try {
      const [r, answer] = await post(action, body);
      say(answer.message || answer.error || "", !r.ok, false);
      if (r.ok) await after({ next: Number(segment) });
    } finally { acting = false; }
  }

  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (!(form instanceof HTMLFormElement) || !form.classList.contains("act")) return;
    ev.preventDefault();
    const button = ev.submitter;
    const body = new URLSearchParams(new FormData(form));
    // The clicked button says which verdict (FormData's submitter argument is too new for some phones).
    if (button && button.name) body.set(button.name, button.value);
    if (form.dataset.confirm) {
      if (!window.confirm(form.dataset.confirm)) return;
      body.set("confirmed", "yes");
    }
    const verdict = body.get("verdict");
    const key = body.get("segment") + "-" + body.get("candidate");
    if (verdict) own.set(key, Date.now());
    form.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    acting = true;
    try {
      const [r, answer] = await post(form.action, body);
      const undoable = r.ok && (verdict === "approve" || verdict === "reject");
      if (undoable) {
        lastDecision = { action: form.action, segment: body.get("segment"),
                         candidate: body.get("candidate"), at: Date.now() };
      }
      say(answer.message || answer.error || (r.ok ? "" : "refused (" + r.status + ")"), !r.ok, undoable);
      await after(r.ok ? answer : {});
    } catch (err) {
      say("The panel did not answer: is the daemon running?", true, false);
    } finally {
      acting = false;
      form.querySelectorAll("button").forEach((b) => { b.disabled = false; });
    }
  });

  // ---- keys ------------------------------------------------------------------------------
  document.addEventListener("keydown", (ev) => {
    if (!review() || ev.altKey || ev.ctrlKey || ev.metaKey || acting) return;
    const target = ev.target;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.nodeName))) return;
    const onButton = target && (target.nodeName === "BUTTON" || target.nodeName === "A" ||
                                target.nodeName === "SUMMARY" || target.nodeName === "AUDIO");
    const list = figures();
    const current = chosen();
    const at = list.indexOf(current);
    const key = ev.key;
    let handled = true;
    if (/^[1-9]$/.test(key) && list[Number(key) - 1]) choose(list[Number(key) - 1]);
    else if (key === "ArrowRight" && !onButton) choose(list[Math.min(at + 1, list.length - 1)]);
    else if (key === "ArrowLeft" && !onButton) choose(list[Math.max(at - 1, 0)]);
    else if (key === "a" || key === "A" || (key === "Enter" && !onButton)) submitVerdict(current, "approve");
    else if (key === "x" || key === "X") submitVerdict(current, "reject");
    else if (key === "r" || key === "R") {
      const regen = review().querySelector("form.regen");
      if (regen) regen.requestSubmit();
    } else if (key === "j" || key === "J" || key === "PageDown" || key === "k" || key === "K" ||
               key === "PageUp") {
      const rel = (key === "j" || key === "J" || key === "PageDown") ? "next" : "prev";
      const link = review().querySelector("a[rel=" + rel + "]");
      if (link) refresh(link.getAttribute("href")).then(focusReview);
    } else if (key === "u" || key === "U") undoLast();
    else if (key === "?") {
      const keys = document.getElementById("keys");
      if (keys) keys.open = !keys.open;
    } else handled = false;
    if (handled) ev.preventDefault();
  });

  // ---- swipes ----------------------------------------------------------------------------
  let touch = null;
  document.addEventListener("touchstart", (ev) => {
    const figure = ev.target.closest && ev.target.closest("figure.cand");
    if (figure && ev.touches.length === 1) {
      touch = { figure, x: ev.touches[0].clientX, y: ev.touches[0].clientY };
    }
  }, { passive: true });
  document.addEventListener("touchend", (ev) => {
    if (!touch || !ev.changedTouches.length) return;
    const dx = ev.changedTouches[0].clientX - touch.x;
    const dy = ev.changedTouches[0].clientY - touch.y;
    const figure = touch.figure;
    touch = null;
    // A swipe is mostly sideways and long enough not to be a tap or a scroll.
    if (Math.abs(dx) < 60 || Math.abs(dy) > Math.abs(dx) / 2) return;
    submitVerdict(figure, dx > 0 ? "approve" : "reject");
  }, { passive: true });

  if (review() && !location.hash) focusReview();
  if (every > 0) {
    setInterval(() => { if (!document.hidden && !acting) refresh(); }, every);
  }
})();
""".replace("__UNDO_MS__", str(UNDO_MS))
