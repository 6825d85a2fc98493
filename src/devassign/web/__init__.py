"""The web dashboard: server-rendered HTML at ``/ui``; routes in ``dashboard.py``, pages beside it."""
