"""How clips become the video: the timeline, assembly, ffmpeg and quality checks.

How this works: ``timeline`` turns segments and clips into cuts on the beat
grid (pure); ``assembly`` runs ffmpeg over them with the song; ``media`` is the
one seam to ffmpeg and probing; ``qc`` checks images and clips before anyone
sees them.

May import: ``daemon.music``, ``daemon.runs`` and the floor.
"""
