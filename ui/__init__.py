"""The local web console (`sagalab ui`): saga list, per-saga swimlane timeline, breakers and
queue, simulation report charts, a trace's span tree (from a `--trace-file`, ui.traces), and
(with `--allow-actions`) operator action buttons.

Server-rendered pages (ui.pages) over the store port, a small script committed as source
(static/ui.js: live updates and the timeline's SVG), no build step and no CDN.
"""

from .app import create_app
from .timeline import build_timeline

__all__ = ["build_timeline", "create_app"]
