"""The web panel's HTML: pure functions from run summaries to strings.

How this works: no template engine and no frontend framework; each function
returns a piece of HTML built from a ``Summary`` and every value that came
from outside (song names, prompts, error messages, run ids) passes through
``e`` (HTML escaping, quotes included) or ``run_href`` (percent-encoding for
a URL path), so a song called ``<b>शिव तांडव 🔱</b>.flac`` shows as typed.
The live part of every page is the inside of ``<main id="live">``: the app
sends it alone when the page's script polls, so a refresh is one small fetch
and a swap, and the page works (minus live updates) without JavaScript,
because every action is a plain ``<form method="post">``.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import replace
from urllib.parse import quote

from daemon.approval.notice import Action, Code, parse
from daemon.channels.web.views import Summary
from daemon.runs.states import State

# The order a person reads the index in: what needs them first, then work in
# progress and finished videos; failed runs last, folded away (``COLLAPSED``)
# so a pile of junk never pushes the finished ones below the fold.
INDEX_ORDER: tuple[State, ...] = (
    State.PENDING_APPROVAL, State.INCOMING, State.ANALYZED,
    State.IMAGED, State.APPROVED, State.RENDERED, State.FAILED,
)
COLLAPSED: frozenset[State] = frozenset({State.FAILED})
# Where the panel's "Forget all failed" form posts (see daemon.channels.web.app).
FORGET_FAILED_PATH = "/failed/forget"
LABELS: dict[State, str] = {
    State.PENDING_APPROVAL: "Waiting for you",
    State.FAILED: "Failed",
    State.INCOMING: "Arrived",
    State.ANALYZED: "Analysed, making candidates",
    State.IMAGED: "Candidates made",
    State.APPROVED: "Approved, rendering",
    State.RENDERED: "Finished",
}


def e(value: object) -> str:
    """Escape text for HTML content and attribute values."""
    return html.escape(str(value), quote=True)


def run_href(run_id: str, *tail: str | int) -> str:
    """The panel URL of a run (or of something inside it), percent-encoded."""
    return "/".join(["", "runs", quote(run_id, safe=""), *(quote(str(t), safe="") for t in tail)])


def document(title: str, main: str, *, version: str = "", poll_ms: int = 0, csrf: str = "") -> str:
    """A whole page around the live ``main`` part (``csrf`` also goes in a meta tag for scripts)."""
    meta = f'<meta name="csrf-token" content="{e(csrf)}">\n' if csrf else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
{meta}<title>{e(title)} · Tandava</title>
<link rel="icon" href="/static/icon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/panel.css">
<script src="/static/panel.js" defer></script>
</head>
<body>
<header class="top"><a class="brand" href="/">Tandava</a><span class="sub">music videos from songs</span></header>
<p id="flash" class="flash" role="status" hidden></p>
<p id="announce" class="sr-only" aria-live="polite"></p>
<main id="live" data-poll-ms="{poll_ms}" data-version="{e(version)}">
{main}
</main>
</body>
</html>
"""


def message_main(title: str, text: str, back: str = "/") -> str:
    """A short page for a refusal or an error: what happened and the way back."""
    return (f'<section class="box err"><h1>{e(title)}</h1><p class="wrap">{e(text)}</p>'
            f'<p><a class="btn" href="{e(back)}">Back</a></p></section>')


def _hidden(csrf: str, **fields: object) -> str:
    pairs = {"csrf": csrf, **fields}
    return "".join(f'<input type="hidden" name="{e(k)}" value="{e(v)}">' for k, v in pairs.items())


def action(run_id: str, what: str, label: str, csrf: str, *, primary: bool = False,
           name: str = "", **fields: object) -> str:
    """A one-button form that POSTs one action for a run (``name``: its accessible name,
    when the visible label alone does not say which run it acts on)."""
    cls = ' class="primary"' if primary else ""
    aria = f' aria-label="{e(name)}"' if name else ""
    return (f'<form class="act" method="post" action="{run_href(run_id, what)}">'
            f'{_hidden(csrf, **fields)}<button type="submit"{cls}{aria}>{e(label)}</button></form>')


def counts_nav(counts: dict[State, int]) -> str:
    """Runs per state, each linking to its section (a state with no runs has no section to go to)."""
    chips = "".join(
        f'<a class="chip s-{state.value}" href="#{state.value}">{e(LABELS[state])} '
        f'<b>{counts.get(state, 0)}</b></a>' if counts.get(state, 0) else
        f'<span class="chip empty-chip">{e(LABELS[state])} <b>0</b></span>' for state in INDEX_ORDER)
    return f'<nav class="counts" aria-label="runs per state">{chips}</nav>'


def index_main(groups: Sequence[tuple[State, Sequence[Summary], int]], csrf: str, *,
               inbox_hint: str = "") -> str:
    """Every state with its runs (newest first); a long state shows its newest and links to all."""
    counts = {state: total for state, _, total in groups}
    parts = ['<h1>Runs</h1>', counts_nav(counts)]
    if not any(counts.values()):
        parts.append(f'<p class="empty">No runs yet: drop a song into the inbox{e(inbox_hint)}.</p>')
    for state, summaries, total in groups:
        if not total:
            continue
        more = ""
        if total > len(summaries):
            more = (f'<p class="more"><a class="btn" href="/states/{state.value}">All {total} '
                    f'{e(LABELS[state].lower())} runs</a></p>')
        parts.append(section(state, summaries, csrf, total=total, more=more,
                             collapsed=state in COLLAPSED))
    return "\n".join(parts)


def section(state: State, summaries: Iterable[Summary], csrf: str, *, total: int,
            more: str = "", collapsed: bool = False) -> str:
    """One state's heading and its cards; ``collapsed`` folds them under the heading."""
    cards = "\n".join(card(s, csrf) for s in summaries)
    heading = f'<h2>{e(LABELS[state])} <small>({total})</small></h2>'
    body = f'<div class="grid">{cards}</div>{more}'
    if state is State.FAILED:
        body += (f'<form class="act" method="post" action="{FORGET_FAILED_PATH}">{_hidden(csrf)}'
                 f'<button type="submit">Forget all failed runs</button></form>'
                 '<p class="meta">Forgotten runs move to archive/ in the state folder, songs and all.</p>')
    if collapsed:
        return (f'<section class="state" id="{state.value}"><details>'
                f'<summary>{heading}</summary>{body}</details></section>')
    return f'<section class="state" id="{state.value}">{heading}{body}</section>'


def state_main(state: State, summaries: Sequence[Summary], csrf: str, *, total: int,
               page: int, pages: int) -> str:
    """All runs of one state, one page at a time."""
    links = []
    if page > 1:
        links.append(f'<a class="btn" href="/states/{state.value}?page={page - 1}">Newer</a>')
    if page < pages:
        links.append(f'<a class="btn" href="/states/{state.value}?page={page + 1}">Older</a>')
    nav = f'<p class="more">Page {page} of {pages} {"".join(links)}</p>'
    return (f'<nav class="crumbs"><a href="/">← All runs</a></nav>'
            f'{section(state, summaries, csrf, total=total)}{nav}')


def picture(s: Summary, *, size: str = "320x180") -> str:
    """The run's picture, or a placeholder when it has none yet."""
    width, height = size.split("x")
    if s.thumb is None:
        return '<span class="noimg" aria-hidden="true">♪</span>'
    return (f'<img src="{run_href(s.view.run_id, "thumb")}" alt="" loading="lazy" '
            f'width="{width}" height="{height}">')


def card(s: Summary, csrf: str) -> str:
    """A run on the index: picture, song, progress and its one obvious action."""
    v = s.view
    href = run_href(v.run_id)
    body = [f'<h3 class="wrap"><a href="{href}">{e(v.song)}</a></h3>',
            f'<p class="meta wrap">{e(v.run_id)}</p>']
    if s.problem:
        body.append(f'<p class="err wrap">cannot read this run: {e(s.problem)}</p>')
    if v.state is State.FAILED:  # junk a person wants gone: archived, song and all
        body.append(f'<div class="actions">{action(v.run_id, "forget", "Forget", csrf)}</div>')
    if v.error:
        body.append(f'<p class="err wrap">{e(v.error)}</p>')
    body.append(progress_list(s.progress, csrf, v.run_id))
    buttons = ""
    if v.segments and v.state is not State.PENDING_APPROVAL:
        body.append(f'<p><b>{len(v.open_segments)} of {len(v.segments)}</b> offered segments to decide, '
                    f'{v.more_coming} more on their way</p>')
        buttons = f'<a class="btn primary" href="{href}" aria-label="Review {e(v.song)}">Review</a>'
    elif v.state is State.PENDING_APPROVAL and v.segments:
        body.append(f'<p><b>{len(v.open_segments)} of {len(v.segments)}</b> segments to decide</p>')
        buttons = f'<a class="btn primary" href="{href}" aria-label="Review {e(v.song)}">Review</a>'
    elif v.state is State.FAILED:
        buttons = action(v.run_id, "retry", "Retry", csrf, primary=True, name=f"Retry {v.song}") + \
            f'<a class="btn" href="{href}" aria-label="Details of {e(v.song)}">Details</a>'
    elif v.state is State.RENDERED and v.video is not None:
        buttons = f'<a class="btn primary" href="{href}" aria-label="Play {e(v.song)}">Play</a>'
    return (f'<article class="card s-{v.state.value}" id="run-{e(v.run_id)}">'
            # The picture repeats the title link: out of the tab order and the accessibility tree.
            f'<a class="pic" href="{href}" tabindex="-1" aria-hidden="true">{picture(s)}</a>'
            f'<div class="body">{"".join(body)}<div class="actions">{buttons}</div></div></article>')


def progress_list(lines: Sequence[str], csrf: str, run_id: str = "") -> str:
    """Live progress lines (stage waiting reasons, jobs in flight), their actions as buttons."""
    if not lines:
        return ""
    items = "".join(f"<li>{notice_html(line, csrf, run_id)}</li>" for line in lines)
    return f'<ul class="progress">{items}</ul>'


def notice_html(text: str, csrf: str, run_id: str = "") -> str:
    """A notice (``daemon.approval.notice``) about run ``run_id``: its words as text, each action a
    button or a link in the sentence, other commands as code; never the CLI's backticks."""
    out = []
    for part in parse(text):
        if isinstance(part, Action):
            out.append(_action_html(part if part.run_id else replace(part, run_id=run_id), csrf))
        elif isinstance(part, Code):
            out.append(f"<code>{e(part.text)}</code>")
        else:
            out.append(e(part))
    return "".join(out)


def _action_html(act: Action, csrf: str) -> str:
    """An action inside a sentence: reviewing is a link to the run, the rest one-button forms."""
    if not act.run_id or act.verb == "pending":
        href = run_href(act.run_id) if act.run_id else "/"
        return f'<a class="inline" href="{href}">{e(act.words)}</a>'
    if act.verb == "approve-all":
        return _inline_form(act.run_id, "approve-all", act.words, csrf)
    if act.verb == "retry":  # hints say "then run `tandava retry …`": "then run [retry]"
        return _inline_form(act.run_id, "retry", "retry", csrf)
    if act.verb == "regenerate":
        return _inline_form(act.run_id, "decide", act.words, csrf, segment=act.segment, verdict="regenerate")
    return _inline_form(act.run_id, "decide", act.words, csrf,
                        segment=act.segment, candidate=act.candidate, verdict="approve")


def _inline_form(run_id: str, what: str, label: str, csrf: str, **fields: object) -> str:
    """A one-button form inside a sentence (``panel.js`` posts every ``.act`` form the same way)."""
    return (f'<form class="act inline" method="post" action="{run_href(run_id, what)}">'
            f'{_hidden(csrf, **fields)}<button type="submit">{e(label)}</button></form>')


def run_main(s: Summary, csrf: str, *, files: Sequence[str] = ()) -> str:
    """One run: its state, progress, and what a person can do with it there."""
    v = s.view
    parts = [
        '<nav class="crumbs"><a href="/">← All runs</a></nav>',
        f'<h1 class="wrap">{e(v.song)}</h1>',
        f'<p class="meta wrap"><span class="badge s-{v.state.value}">{e(LABELS[v.state])}</span> '
        f'<code>{e(v.run_id)}</code></p>',
    ]
    if s.problem:
        parts.append(message_main("This run cannot be read right now", s.problem))
    parts.append(progress_list(s.progress, csrf, v.run_id))
    if v.state is State.FAILED:
        # A div, not a p: a form inside a p would close the paragraph.
        hint = f'<div class="hint wrap">{notice_html(v.hint, csrf, v.run_id)}</div>' if v.hint else ""
        parts.append(f'<section class="box err"><h2>What went wrong</h2>'
                     f'<p class="wrap">{e(v.error or "no reason recorded")}</p>{hint}'
                     f'<div class="actions">{action(v.run_id, "retry", "Retry", csrf, primary=True)}'
                     f'{action(v.run_id, "forget", "Forget (archive it)", csrf)}</div></section>')
    elif v.state is State.RENDERED:
        parts.append(player(s, files))
    elif v.state is State.PENDING_APPROVAL:
        # The panel shows a waiting run in review mode (daemon.channels.web.review).
        parts.append(f'<p><a class="btn primary" href="{run_href(v.run_id)}">Review</a></p>')
    elif v.state is State.APPROVED:
        parts.append('<p>Every segment is approved: clips and the video are being made.</p>')
    return "\n".join(p for p in parts if p)


def player(s: Summary, files: Sequence[str]) -> str:
    """The finished video, playable in the page, with downloads of every export."""
    v = s.view
    if v.video is None:
        return '<p class="err">This run is finished but its final.mp4 is missing.</p>'
    poster = f' poster="{run_href(v.run_id, "files", "thumbnail.jpg")}"' if v.thumbnail else ""
    downloads = "".join(
        f'<a class="btn" href="{run_href(v.run_id, "files", name)}" download>Download {e(name)}</a>'
        for name in files if not name.endswith((".jpg", ".png")))
    return (f'<video controls playsinline preload="metadata"{poster} '
            f'aria-label="The music video of {e(v.song)}" '
            f'src="{run_href(v.run_id, "files", "final.mp4")}"></video>'
            f'<div class="actions">{downloads}</div>')
