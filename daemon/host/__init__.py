"""How it runs for months: service definitions, systemd notify, doctor, reports, log viewing.

How this works: nothing here makes a video. ``service`` writes systemd units
and WinSW definitions; ``notify`` speaks sd_notify; ``doctor`` gathers every
check (each package brings its own ``doctor_checks``); ``report`` formats
status and show; ``cleanup`` words forget and clean; ``logview`` renders the
JSON logs.

May import: everything below it (channels, stages, and down).
"""
