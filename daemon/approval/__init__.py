"""The decisions people make, in one store, and what every channel shows of them.

How this works: ``store`` keeps ``approvals.json``, an append-only log per
run, and derives each segment's status from it; ``decisions`` gives every
channel the same views (``RunView``) and actions (``decide``, ``approve_all``,
``retry``), so the CLI, Telegram, the panel and the API never disagree.
``notice`` keeps the actions in a text (a waiting reason, a hint) apart from
its words, so each channel offers them its own way: a command, a button, words.

May import: ``daemon.music`` (the plan), ``daemon.runs`` and the floor.
"""
