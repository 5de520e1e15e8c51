"""``workbench ui``: open the tracking database, bind the port, serve the web app until stopped.

The database is opened (and its schema checked) and the port bound before anything listens, so a
mistyped db or a port in use ends the command with one line, never a half-started server. Ctrl-C
and SIGTERM stop it after the requests in flight are answered.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import TYPE_CHECKING

from workbench.config.secrets import mask
from workbench.serve.server import bind
from workbench.tracking.tracker import Tracker
from workbench.ui.app import create_app

if TYPE_CHECKING:
    from workbench.config.schema import UIParams


def serve_ui(settings: UIParams, db: str) -> int:
    """Serve the runs of ``db`` on ``settings.host``:``settings.port``; 0 after a requested stop."""
    import uvicorn

    tracker = Tracker(db, create=False)  # a mistyped SQLite path is named, not created empty
    sock = bind(settings.host, settings.port, section="ui")
    sock.listen(128)  # from here a browser's request waits for the app instead of being refused
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("uvicorn.error").setLevel(logging.INFO)
    print(f"runs of {mask(db)} on http://{shown}:{port}", flush=True)
    config = uvicorn.Config(create_app(tracker), log_config=None, access_log=False, lifespan="off")
    # uvicorn raises the signal it caught again after its graceful stop; a requested stop exits 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    sys.stdout.flush()
    return 0 if server.started else 1
