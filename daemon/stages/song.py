"""The run's song as a stage needs it: there, or a failure that says how to put it back.

How this works: a stage that reads the song (``analyze``, ``render``) asks
``song_of`` first. A song a person deleted or moved out of the run folder
fails the run with a ``BadInput`` whose hint names the folder the run is about
to rest in (``failed/<run>``), not the one it is leaving, so the path it gives
still exists when a person reads it.
"""

from __future__ import annotations

from pathlib import Path

from daemon.errors import BadInput
from daemon.runs.stage import StageRun
from daemon.runs.states import State


def song_of(job: StageRun) -> Path:
    """The run's song; a song deleted from its run folder fails the run with the way back."""
    song = job.ref.path / job.manifest.song.file_name
    if song.is_file():
        return song
    rest = job.store.dir_for(State.FAILED) / job.ref.run_id
    raise BadInput(
        f"The song file {job.manifest.song.file_name} is missing from its run folder "
        "(it was deleted or moved away).",
        f"Put the song back into {rest} as {job.manifest.song.file_name} and run "
        f"`tandava retry {job.ref.run_id}`, or drop it into the inbox again and "
        f"`tandava forget {job.ref.run_id}`.",
        cause="Missing",
    )
