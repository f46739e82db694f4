"""Who makes images and clips: storyboard, folder, Ken Burns, ComfyUI, Google (Gemini, Veo).

How this works: ``base`` holds the two small interfaces (``ImageBackend``,
``VideoBackend``: ``submit``/``collect`` a ``Job``). ``images`` has the local
image backends (``storyboard`` paints their placeholder frames), ``kenburns``
the CPU clip backend, ``comfy/`` the ComfyUI client, pool, supervisor and
workflows, ``google/`` the paid cloud backends with their prices, caps and
spend ledger. ``framing`` holds how far a clip's camera may move, which the
storyboard needs to keep its label in view. A new backend is a module or a folder
here with the same two interfaces; backends never import each other.

May import: ``daemon.video`` (ffmpeg, QC), ``daemon.runs`` and the floor.
"""
