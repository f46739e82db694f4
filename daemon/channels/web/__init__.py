"""The web control panel: ``server`` (uvicorn in a thread, token rules), ``app``
(Starlette routes), ``views`` and ``pages`` (HTML), ``assets`` (CSS and script)."""
