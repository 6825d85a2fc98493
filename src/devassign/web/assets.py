"""The dashboard's one script, ``static/live.js``, served by the package itself: no CDN, so
the dashboard works on a closed network. Its URL carries a hash of its text, so a browser may
keep it for a day and still never runs an old copy after an upgrade."""

from __future__ import annotations

import hashlib
from importlib.resources import files

LIVE_JS_PATH = "/ui/static/live.js"
LIVE_JS = (files("devassign.web") / "static" / "live.js").read_text(encoding="utf-8")
LIVE_JS_URL = f"{LIVE_JS_PATH}?v={hashlib.sha256(LIVE_JS.encode()).hexdigest()[:12]}"
