"""The run model and how it moves: states, the manifest, the store, the engine.

How this works: ``states`` is the pure, table-driven state model; ``manifest``
the ``run.json`` schema; ``store`` the folders (one atomic rename per state
change); ``engine`` the loop that hands runs to stages; ``health`` the
heartbeat file; ``archive`` forgetting runs; ``retention`` what old runs keep
and how much the state root holds. Everything here knows runs, never what a
stage makes (retention names the two folders of intermediates it removes).

May import: ``daemon.config``, ``daemon.errors``, ``daemon.defaults``, ``daemon.logs``.
"""
