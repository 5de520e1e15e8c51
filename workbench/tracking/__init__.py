"""The tracking database: runs, their steps, parameters, metrics and artifacts.

``tables`` holds the schema, ``migrations`` its history (Alembic), ``tracker`` reads and writes it.
"""

from workbench.tracking.tracker import HEARTBEAT, STALE_AFTER, Tracker, display_url, new_holder, now, schema_head

__all__ = ["HEARTBEAT", "STALE_AFTER", "Tracker", "display_url", "new_holder", "now", "schema_head"]
