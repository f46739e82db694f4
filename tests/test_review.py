"""Review mode without a browser: undo in the decision log, the pages' names, thumbnails, "approve all" asking once."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from PIL import Image
from test_approval import new_pending_run
from test_web import csrf_of, new_failed_run, new_rendered_run, post

from daemon.approval import decisions
from daemon.approval.store import UNDO_SECONDS, ApprovalStore, DecisionRefused
from daemon.channels.web.server import WebPanel
from daemon.channels.web.thumbs import thumbnail
from daemon.config import Settings
from daemon.runs.store import RunStore


@pytest.fixture
def panel(settings: Settings, store: RunStore) -> Iterator[WebPanel]:
    """A panel on 127.0.0.1 on any free port."""
    settings.web.port = 0
    with WebPanel(settings, store) as running:
        yield running


def test_undo_leaves_the_candidate_undecided_and_keeps_the_log(store: RunStore, tmp_path: Path,
                                                               settings: Settings) -> None:
    """An undo is a new entry: the candidate is open again in the shared view, and the log keeps both."""
    ref, _ = new_pending_run(store, tmp_path, settings, segments=2)
    decisions.decide(store, ref.run_id, "approve", 0, 1, by="me", channel="web")
    decisions.decide(store, ref.run_id, "undo", 0, 1, by="me", channel="web")
    view = decisions.run_view(store, store.find(ref.run_id))
    assert view.segments[0].approved is None
    assert [c.status for c in view.segments[0].candidates] == ["open", "open"]
    log = ApprovalStore(store).load(store.find(ref.run_id)).decisions
    assert [d.verdict for d in log] == ["approve", "undo"]


def test_an_undo_needs_a_recent_decision(store: RunStore, tmp_path: Path, settings: Settings) -> None:
    """Nothing to undo, or a decision older than the window, is refused with the reason."""
    ref, _ = new_pending_run(store, tmp_path, settings, segments=1)
    with pytest.raises(DecisionRefused, match="no decision to undo"):
        decisions.decide(store, ref.run_id, "undo", 0, 0, by="me", channel="web")
    decisions.decide(store, ref.run_id, "reject", 0, 0, by="me", channel="telegram")
    approvals = ApprovalStore(store)
    log = approvals.load(ref)
    log.decisions[-1].at -= timedelta(seconds=UNDO_SECONDS + 1)
    approvals.save(ref, log)
    with pytest.raises(DecisionRefused, match="decide again instead"):
        decisions.decide(store, ref.run_id, "undo", 0, 0, by="me", channel="web")


def test_undo_shows_in_the_cli_as_well(store: RunStore, tmp_path: Path, settings: Settings,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """After an undo in the panel, the command line lists the segment as open again."""
    from daemon.cli import main

    ref, _ = new_pending_run(store, tmp_path, settings, segments=1)
    capsys.readouterr()
    assert main(["--config", str(settings.config_file), "pending"]) == 0
    before = capsys.readouterr().out
    decisions.decide(store, ref.run_id, "approve", 0, 0, by="me", channel="web")
    assert main(["--config", str(settings.config_file), "pending"]) == 0
    assert capsys.readouterr().out != before
    decisions.decide(store, ref.run_id, "undo", 0, 0, by="me", channel="web")
    assert main(["--config", str(settings.config_file), "pending"]) == 0
    assert capsys.readouterr().out == before


def test_review_mode_names_every_control_by_segment_and_candidate(panel: WebPanel, store: RunStore,
                                                                  tmp_path: Path, settings: Settings) -> None:
    """Each button says what it acts on, each picture says which candidate and what was asked for."""
    settings.images.candidates = 2
    ref, _ = new_pending_run(store, tmp_path, settings, segments=3)
    page = requests.get(f"{panel.url}runs/{ref.run_id}", timeout=10).text
    assert 'aria-label="Approve segment 0, candidate 0"' in page
    assert 'aria-label="Reject segment 0, candidate 1"' in page
    assert 'aria-label="Make new candidates now for segment 0"' in page
    assert 'alt="Segment 0, candidate 1: prompt 0"' in page
    assert "3 of 3</b> left to decide" in page and "#t=0.00,5.00" in page
    labels = re.findall(r'<button[^>]*aria-label="([^"]+)"', page)
    assert len(labels) == len(set(labels))  # no two controls share a name


def test_a_decided_candidate_offers_only_the_opposite_action(panel: WebPanel, store: RunStore,
                                                             tmp_path: Path, settings: Settings) -> None:
    """An approved candidate shows its state and a Reject button, no second Approve."""
    settings.images.candidates = 2
    ref, _ = new_pending_run(store, tmp_path, settings, segments=2)
    decisions.decide(store, ref.run_id, "approve", 0, 1, by="cli", channel="cli")
    page = requests.get(f"{panel.url}runs/{ref.run_id}?segment=0", timeout=10).text
    figure = re.search(r'<figure[^>]*id="c-0-1".*?</figure>', page, re.S)
    assert figure is not None
    assert 'data-status="approved"' in figure.group(0) and 'data-channel="cli"' in figure.group(0)
    assert "Reject segment 0, candidate 1" in figure.group(0)
    assert "Approve segment 0, candidate 1" not in figure.group(0)


def test_after_a_decision_the_page_moves_to_the_next_open_segment(panel: WebPanel, store: RunStore,
                                                                  tmp_path: Path, settings: Settings) -> None:
    """Approving segment 0 sends the browser to segment 1, and the script is told what is next."""
    ref, _ = new_pending_run(store, tmp_path, settings, segments=3)
    with requests.Session() as s:
        plain = post(s, panel.url, f"/runs/{ref.run_id}/decide", verdict="approve", segment=0, candidate=0)
        assert plain.headers["location"] == f"/runs/{ref.run_id}?segment=1"
        page = s.get(panel.url + f"runs/{ref.run_id}").text
        scripted = s.post(f"{panel.url}runs/{ref.run_id}/decide", timeout=10,
                          headers={"X-Tandava-Fetch": "1"},
                          data={"csrf": csrf_of(page), "verdict": "approve", "segment": "2",
                                "candidate": "0"})
    assert scripted.json()["next"] == 1 and scripted.json()["left"] == 1


def test_approve_all_asks_once_before_deciding(panel: WebPanel, store: RunStore, tmp_path: Path,
                                               settings: Settings) -> None:
    """Without the confirmation, "approve all" shows the question and decides nothing."""
    ref, _ = new_pending_run(store, tmp_path, settings, segments=3)
    with requests.Session() as s:
        asked = post(s, panel.url, f"/runs/{ref.run_id}/approve-all")
        assert asked.status_code == 200 and "Approve 3 segments?" in asked.text
        assert ApprovalStore(store).load(store.find(ref.run_id)).decisions == []
        page = s.get(panel.url + f"runs/{ref.run_id}").text
        assert 'data-confirm="Approve the first candidate of 3 open segments?"' in page
        assert post(s, panel.url, f"/runs/{ref.run_id}/approve-all", confirmed="yes").status_code == 303
    assert len(ApprovalStore(store).load(store.find(ref.run_id)).decisions) == 3


def test_candidates_are_served_at_display_size(panel: WebPanel, store: RunStore, tmp_path: Path,
                                               settings: Settings) -> None:
    """?w=640 gives a cached JPEG 640 pixels wide; other widths are refused; the original stays."""
    ref, _ = new_pending_run(store, tmp_path, settings, segments=1)
    source = decisions.run_view(store, ref).segments[0].candidates[0].image
    Image.new("RGB", (1664, 960), (30, 60, 90)).save(source)
    url = f"{panel.url}runs/{ref.run_id}/candidates/0/0"
    small = requests.get(url + "?w=640", timeout=10)
    assert small.status_code == 200 and small.headers["content-type"] == "image/jpeg"
    assert len(small.content) < source.stat().st_size
    cached = list((store.root / ".cache" / "thumbs").glob("*.jpg"))
    assert len(cached) == 1
    with Image.open(cached[0]) as picture:
        assert picture.size == (640, 369)
    assert requests.get(url + "?w=641", timeout=10).status_code == 400
    assert requests.get(url, timeout=10).content == source.read_bytes()


def test_a_thumbnail_is_remade_when_its_candidate_changes(tmp_path: Path) -> None:
    """The cache key follows the source: a regenerated picture gets a new thumbnail."""
    source = tmp_path / "c.png"
    Image.new("RGB", (800, 450), (255, 0, 0)).save(source)
    first = thumbnail(source, tmp_path / "cache", 320)
    Image.new("RGB", (900, 450), (0, 0, 255)).save(source)
    second = thumbnail(source, tmp_path / "cache", 320)
    assert first != second and second.is_file()
    with Image.open(second) as picture:
        assert picture.size == (320, 160)


def test_the_index_has_a_heading_and_no_links_to_empty_states(panel: WebPanel, store: RunStore,
                                                               tmp_path: Path) -> None:
    """The index opens with an h1; a state with no runs is a plain chip; pictures leave the a11y tree."""
    new_failed_run(store, tmp_path)
    new_rendered_run(store, tmp_path)
    page = requests.get(panel.url, timeout=10).text
    assert "<h1>Runs</h1>" in page
    assert 'href="#failed"' in page and 'href="#pending_approval"' not in page
    assert all('aria-hidden="true"' in link for link in re.findall(r'<a class="pic"[^>]*>', page))
