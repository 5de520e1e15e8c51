"""``workbench ui``: a read-only web app over the tracking database and the runs' stores.

Pages are rendered on the server (Jinja2 with autoescape) and charts are inline SVG drawn here, so
the app needs no build step, no CDN and no script: it works offline, behind a proxy, and in any
browser. Every read goes through the tracker and :mod:`workbench.tracking.queries`; state lives in
the URL only, so people sharing one database and one link see the same page.
"""
