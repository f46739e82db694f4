"""Who writes the prompts: the theme writer, Gemini and Ollama, and the chain that tries them.

How this works: ``brief`` holds what a remote writer is given and must answer
(``PlanIdeas``); ``chain`` runs the configured writer, its fallbacks and
finally the theme writer (which cannot fail), and fits any answer to the local
beat grid with ``music.plan.fit_ideas``. A new writer is a module here with a
``RemoteWriter`` and a ``doctor_checks``; register it in ``chain.make_remote_writer``.

May import: ``daemon.music``, ``daemon.runs`` and the floor; never a backend or a channel.
"""
