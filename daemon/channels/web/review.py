"""Review mode: one segment at a time, made for culling by keyboard, touch and screen reader.

How this works: a run waiting for a person opens on its first open segment,
its candidates large, with the segment's slice of the song playable in place.
Everything is a plain form, so it works without a script; ``panel.js`` adds
the keys (1–4 or arrows choose, A or Enter approves, X rejects, R asks for new
candidates, J/K move, U undoes, ? lists them) and swipes, and after each
decision it patches the page to the next open segment and puts focus on its
first candidate: one keystroke per segment.

Every control says what it acts on ("Approve segment 3, candidate 1"), a
decided candidate shows its state and offers only the opposite action, and
each picture's alt text names the segment, the candidate and the prompt.
Candidate numbers are the ones every channel uses (``tandava approve RUN 3:1``).
"""

from __future__ import annotations

from collections.abc import Sequence

from daemon.approval.decisions import CandidateView, RunView, SegmentView
from daemon.channels.web.pages import LABELS, e, run_href
from daemon.channels.web.views import Summary

# Display width of a candidate in review mode; pictures are served at this size, not full size.
REVIEW_WIDTH = 640
# In the grid of every segment, a thumbnail's width.
GRID_WIDTH = 320
# Channel names as a person reads them in an announcement.
CHANNEL_NAMES = {"web": "the panel", "telegram": "Telegram", "cli": "the command line",
                 "auto": "the auto policy", "api": "the API"}
KEYS = (
    ("1–4, ← →", "choose a candidate"),
    ("A or Enter", "approve the chosen candidate"),
    ("X", "reject it"),
    ("R", "ask for new candidates for this segment"),
    ("J or Page Down", "next open segment"),
    ("K or Page Up", "previous open segment"),
    ("U", "undo the last decision (for 10 s)"),
    ("?", "show or hide these keys"),
)


def clock(seconds: float) -> str:
    """A time in the song as people read it: 01:05.3."""
    return f"{int(seconds // 60):02d}:{seconds % 60:04.1f}"


def caption(prompt: str, words: int = 12) -> str:
    """The start of a prompt, short enough for alt text."""
    head = prompt.split()
    return " ".join(head[:words]) + ("…" if len(head) > words else "")


def candidate_name(seg: SegmentView, cand: CandidateView) -> str:
    """How a candidate is named to a person, in every control and alt text."""
    return f"segment {seg.index}, candidate {cand.index}"


def alt_text(seg: SegmentView, cand: CandidateView) -> str:
    """A picture's alt: which candidate it is, and a short caption of what was asked for."""
    text = f"Segment {seg.index}, candidate {cand.index}"
    return f"{text}: {caption(seg.prompt)}" if seg.prompt.strip() else text


def _hidden(csrf: str, **fields: object) -> str:
    pairs = {"csrf": csrf, **fields}
    return "".join(f'<input type="hidden" name="{e(k)}" value="{e(v)}">' for k, v in pairs.items())


def decision_buttons(run_id: str, seg: SegmentView, cand: CandidateView, csrf: str) -> str:
    """The candidate's actions: both while open, the opposite one once decided."""
    name = candidate_name(seg, cand)
    buttons = []
    if cand.status != "approved":
        buttons.append(f'<button type="submit" name="verdict" value="approve" class="primary" '
                       f'aria-label="Approve {e(name)}">Approve</button>')
    if cand.status != "rejected":
        buttons.append(f'<button type="submit" name="verdict" value="reject" '
                       f'aria-label="Reject {e(name)}">Reject</button>')
    return (f'<form class="act pick" method="post" action="{run_href(run_id, "decide")}">'
            f'{_hidden(csrf, segment=seg.index, candidate=cand.index)}{"".join(buttons)}</form>')


def status_badge(cand: CandidateView) -> str:
    """The candidate's state in words (never colour alone)."""
    words = {"approved": "approved", "rejected": "rejected", "open": "not decided"}[cand.status]
    return f'<span class="badge c-{cand.status}">{words}</span>'


def figure(run_id: str, seg: SegmentView, cand: CandidateView, csrf: str, *, width: int,
           chosen: bool = False) -> str:
    """One candidate: its picture (a link to full size), state and actions."""
    full = run_href(run_id, "candidates", seg.index, cand.index)
    src = f"{full}?w={width}"
    height = round(width * 9 / 16)
    # The figure is the keyboard's "chosen candidate" (roving tabindex): one tab stop per segment.
    focus = ' tabindex="0"' if chosen else ' tabindex="-1"'
    # The grid of every segment loads pictures as they scroll into view; review mode shows few, at once.
    lazy = ' loading="lazy"' if width < REVIEW_WIDTH else ""
    return (f'<figure class="cand c-{cand.status}" id="c-{seg.index}-{cand.index}"{focus} '
            f'data-segment="{seg.index}" data-candidate="{cand.index}" data-status="{cand.status}" '
            f'data-channel="{e(cand.channel)}" aria-label="{e(candidate_name(seg, cand).capitalize())}, '
            f'{e(cand.status if cand.status != "open" else "not decided")}">'
            f'<a class="full" href="{full}" target="_blank" rel="noopener">'
            f'<img src="{src}" width="{width}" height="{height}"{lazy} alt="{e(alt_text(seg, cand))}">'
            f'<span class="sr-only"> (full size, opens in a new tab)</span></a>'
            f'<figcaption>{status_badge(cand)} <span class="meta">#{cand.index} · seed {cand.seed}</span>'
            f'{decision_buttons(run_id, seg, cand, csrf)}</figcaption></figure>')


def regenerate_form(run_id: str, seg: SegmentView, csrf: str) -> str:
    """"None of these": new candidates for one segment, made now (nothing for an approved segment:
    the decision store asks for its choice to be rejected first)."""
    if seg.approved is not None:
        return ""
    return (f'<form class="act regen" method="post" action="{run_href(run_id, "decide")}">'
            f'{_hidden(csrf, segment=seg.index, verdict="regenerate")}'
            f'<button type="submit" aria-label="Make new candidates now for segment {seg.index}">'
            f'Make new candidates now</button>'
            f'<small>rejects the open candidates here and makes a new round at once, with new seeds; '
            f'a rejected one can still be approved</small></form>')


def approve_all_form(view: RunView, csrf: str) -> str:
    """"Approve all" names what it does and asks once (the script confirms; without it, a page)."""
    open_count = len(view.open_segments)
    question = (f"Approve the first candidate of {open_count} open segment"
                f"{'s' if open_count != 1 else ''}?")
    return (f'<form class="act" method="post" action="{run_href(view.run_id, "approve-all")}" '
            f'data-confirm="{e(question)}">{_hidden(csrf)}'
            f'<button type="submit">Approve the first candidate of every open segment</button></form>')


def confirm_main(view: RunView, csrf: str) -> str:
    """The question "Approve all" asks when no script can ask it."""
    open_count = len(view.open_segments)
    return (f'<section class="box"><h1>Approve {open_count} segment{"s" if open_count != 1 else ""}?</h1>'
            f'<p>This approves the first candidate nobody rejected in each of the {open_count} open '
            f'segments of {e(view.song)}.</p><div class="actions">'
            f'<form method="post" action="{run_href(view.run_id, "approve-all")}">'
            f'{_hidden(csrf, confirmed="yes")}<button type="submit" class="primary">'
            f'Yes, approve {open_count}</button></form>'
            f'<a class="btn" href="{run_href(view.run_id)}">No, go back</a></div></section>')


def next_open(segments: Sequence[SegmentView], after: int | None, *, step: int = 1) -> int | None:
    """The next open segment after ``after`` in the direction of ``step``, wrapping; None if none."""
    open_ids = [s.index for s in segments if s.approved is None]
    if not open_ids:
        return None
    if after is None:
        return open_ids[0]
    ahead = [i for i in open_ids if (i > after if step > 0 else i < after)]
    if ahead:
        return ahead[0] if step > 0 else ahead[-1]
    return open_ids[0] if step > 0 else open_ids[-1]


def review_main(s: Summary, csrf: str, *, segment: int | None) -> str:
    """The review of one segment of a waiting run (the first open one unless ``segment`` says)."""
    v = s.view
    total, left = len(v.segments), len(v.open_segments)
    by_index = {seg.index: seg for seg in v.segments}
    current = by_index.get(segment) if segment is not None else None
    if current is None:
        first = next_open(v.segments, None)
        current = by_index.get(first) if first is not None else None
    # While images are still being made, segments arrive one by one and can be decided at once.
    coming = f" ({v.more_coming} more on their way)" if v.more_coming else ""
    head = [
        '<nav class="crumbs"><a href="/">← All runs</a></nav>',
        f'<h1 class="wrap">{e(v.song)}</h1>',
        f'<p class="meta wrap"><span class="badge s-{v.state.value}">{e(LABELS[v.state])}</span> '
        f'<code>{e(v.run_id)}</code></p>',
        f'<div class="bar"><p id="left" class="count"><b>{left} of {total}</b> left to decide{coming}</p>'
        f'<a class="btn" href="{run_href(v.run_id)}?view=all">Every segment at once</a>'
        f'{approve_all_form(v, csrf) if left else ""}</div>',
    ]
    if not left and v.more_coming:
        head.append(f'<p id="done" tabindex="-1">Every segment offered so far is decided; '
                    f'{v.more_coming} more are being made and appear here when they are ready.</p>')
    elif not left:
        head.append('<p id="done" tabindex="-1">Every segment is approved: the run moves on in a '
                    'few seconds.</p>')
    if current is None:
        return "\n".join(head)
    head.append(segment_review(v, current, csrf, total=total))
    head.append(keys_help())
    head.append(decided_states(v))
    return "\n".join(head)


def decided_states(v: RunView) -> str:
    """Every candidate's state, hidden: the script compares them between refreshes to announce
    what another channel decided, also on segments the page is not showing."""
    spans = "".join(f'<span data-cand="{seg.index}-{c.index}" data-status="{c.status}" '
                    f'data-channel="{e(c.channel)}"></span>' for seg in v.segments for c in seg.candidates)
    return f'<div id="states" hidden>{spans}</div>'


def segment_review(v: RunView, seg: SegmentView, csrf: str, *, total: int) -> str:
    """One segment large: time, mood, prompt, its slice of the song, candidates, and moving on."""
    if seg.approved is not None:
        state = f'<span class="badge s-approved">approved: candidate {seg.approved}</span>'
    elif seg.all_rejected:
        state = '<span class="badge s-failed">every candidate rejected</span>'
    else:
        state = '<span class="badge">open</span>'
    chosen = next((c.index for c in seg.candidates if c.status == "open"),
                  seg.candidates[0].index if seg.candidates else None)
    figures = "".join(figure(v.run_id, seg, c, csrf, width=REVIEW_WIDTH, chosen=c.index == chosen)
                      for c in seg.candidates)
    song = run_href(v.run_id, "song")
    prev_seg = next_open(v.segments, seg.index, step=-1)
    next_seg = next_open(v.segments, seg.index)
    moves = []
    if prev_seg is not None and prev_seg != seg.index:
        moves.append(f'<a class="btn" rel="prev" href="{run_href(v.run_id)}?segment={prev_seg}" '
                     f'data-segment="{prev_seg}">Previous open segment ({prev_seg})</a>')
    if next_seg is not None and next_seg != seg.index:
        moves.append(f'<a class="btn" rel="next" href="{run_href(v.run_id)}?segment={next_seg}" '
                     f'data-segment="{next_seg}">Next open segment ({next_seg})</a>')
    return (f'<section id="review" class="review" data-run="{e(v.run_id)}" data-segment="{seg.index}" '
            f'aria-labelledby="seg-title" tabindex="-1">'
            f'<h2 id="seg-title">Segment {seg.index} <small>of {total} · {clock(seg.start)}–'
            f'{clock(seg.end)} · {e(seg.mood)}</small> {state}</h2>'
            f'<p class="prompt wrap">{e(seg.prompt)}</p>'
            f'<audio controls preload="none" src="{song}#t={seg.start:.2f},{seg.end:.2f}" '
            f'aria-label="The song from {clock(seg.start)} to {clock(seg.end)}"></audio>'
            f'<div class="cands big" role="group" aria-label="Candidates of segment {seg.index}">'
            f'{figures}</div>'
            f'<div class="moves">{regenerate_form(v.run_id, seg, csrf)}{"".join(moves)}</div></section>')


def keys_help() -> str:
    """The list of keys, behind a disclosure button (``?`` toggles it)."""
    rows = "".join(f"<dt><kbd>{e(k)}</kbd></dt><dd>{e(what)}</dd>" for k, what in KEYS)
    return (f'<details class="keys" id="keys"><summary>Keyboard and touch (press ?)</summary>'
            f'<dl>{rows}</dl><p>On a phone: swipe a picture right to approve it, left to reject it.</p>'
            f'</details>')


def grid_main(s: Summary, csrf: str) -> str:
    """Every segment of a waiting run at once, thumbnails at display size, with a skip link."""
    v = s.view
    first = next_open(v.segments, None)
    skip = (f'<a class="skip" href="#seg-{first}">Skip to the first open segment ({first})</a>'
            if first is not None else "")
    head = [
        '<nav class="crumbs"><a href="/">← All runs</a></nav>', skip,
        f'<h1 class="wrap">{e(v.song)}</h1>',
        f'<div class="bar"><p id="left" class="count"><b>{len(v.open_segments)} of '
        f'{len(v.segments)}</b> left to decide</p>'
        f'<a class="btn" href="{run_href(v.run_id)}">Review one segment at a time</a>'
        f'{approve_all_form(v, csrf) if v.open_segments else ""}</div>',
    ]
    sections = []
    for seg in v.segments:
        state = (f'<span class="badge s-approved">approved: candidate {seg.approved}</span>'
                 if seg.approved is not None else '<span class="badge">open</span>')
        figures = "".join(figure(v.run_id, seg, c, csrf, width=GRID_WIDTH) for c in seg.candidates)
        sections.append(
            f'<section class="segment" id="seg-{seg.index}" tabindex="-1" '
            f'aria-labelledby="seg-{seg.index}-title"><h2 id="seg-{seg.index}-title">Segment '
            f'{seg.index} <small>{clock(seg.start)}–{clock(seg.end)} · {e(seg.mood)}</small> {state}'
            f'</h2><p class="prompt wrap">{e(seg.prompt)}</p>'
            f'<div class="grid cands" role="group" aria-label="Candidates of segment {seg.index}">'
            f'{figures}</div>{regenerate_form(v.run_id, seg, csrf)}</section>')
    return "\n".join(p for p in head + sections if p)
