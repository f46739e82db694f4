"""How people decide: one package per channel (``telegram/``, ``web/``).

How this works: a channel shows ``approval.decisions`` views and acts through
its actions; it never reads run folders or writes decisions on its own, and
channels never import each other. A new channel is a folder here with the same
shape: its views, its state, its server or bot, and a ``doctor_checks``.

May import: ``stages``, ``approval``, ``video``, ``music``, ``runs`` and the floor.
"""
