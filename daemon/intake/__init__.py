"""How songs arrive: the inbox watcher and the one intake every way in goes through.

How this works: ``watcher`` notices files in the inbox (native events, rescans,
polling on network shares) and decides when one has fully arrived; ``files``
says what an entry is (a song, a temp name, or something refused with a
reason, such as a symbolic link); ``settle`` does the same for one-shot
``run --once``; ``intake`` turns an arrived file into a run in the store (hash,
duplicates, atomic move, never while it still changes). A new way in (an
upload) calls ``intake`` too, never the store directly.

May import: ``daemon.runs`` and the floor.
"""
