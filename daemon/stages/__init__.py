"""What each state does: analyze, make candidates, wait at the gate, render.

How this works: ``pipeline.build_stages`` lists the stages in order, each an
input state + a work function + a resource for the engine. ``jobs`` is the one
place a stage hands work to a backend (job recorded before it is submitted);
``song`` hands a stage the run's song, or fails the run with the way back.
Stages get their backends and writers from ``daemon.app``'s wiring.
``retempo`` re-plans a run at a tempo a person gives (``retry --tempo``).

May import: ``approval``, ``backends``, ``writers``, ``intake``, ``video``, ``music``, ``runs``, the floor.
"""
