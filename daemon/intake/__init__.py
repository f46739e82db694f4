"""How songs arrive: the inbox watcher and the one intake every way in goes through.

How this works: ``watcher`` notices files in the inbox (native events, rescans,
polling on network shares) and decides when one has fully arrived; ``intake``
turns an arrived file into a run in the store (hash, duplicates, atomic move).
A new way in (an upload) calls ``intake`` too, never the store directly.

May import: ``daemon.runs`` and the floor.
"""
