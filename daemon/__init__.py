"""Tandava: a long-running daemon that turns songs into AI music videos.

Where things are (each package's ``__init__`` says more). Dependencies point
down this list, never up; ``lint-imports`` checks it (contracts in
pyproject.toml):

- ``cli``, ``demo``, ``winservice``: the ways to start it.
- ``app``: the wiring; builds the engine, stages, backends and channels from settings.
- ``host/``: how it runs for months (service files, systemd notify, doctor, reports, logs).
- ``channels/``: how people decide (``telegram/``, ``web/``), each independent of the other.
- ``stages/``: what each state does (analyze, candidates, gate, render).
- ``approval/``: the decision store every channel writes to, and the views they show.
- ``backends/``, ``writers/``, ``intake/``: who makes images and clips, who writes the
  prompts, how songs arrive; siblings that never import each other.
- ``video/``: how clips become the video (timeline, assembly, ffmpeg, QC).
- ``music/``: what a song is made of (decoding, features, analysis, the segment plan).
- ``runs/``: the run model and how it moves (states, manifest, store, engine).
- ``config``, ``errors``, ``checks``, ``logs``, ``defaults``: the floor everything stands on.
"""

__version__ = "0.1.0"
