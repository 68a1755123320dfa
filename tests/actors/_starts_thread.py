"""A module that starts a thread when imported: a fork server must refuse to fork after
preloading it (a forked child gets only the forking thread, and any lock another thread
held at that moment stays locked in the child forever)."""

from __future__ import annotations

import threading

_forever = threading.Event()
threading.Thread(target=_forever.wait, name="started-by-import", daemon=True).start()
