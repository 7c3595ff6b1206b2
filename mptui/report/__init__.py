"""``mptui report``: sessions side by side in one self-contained HTML file, with its figures as
PNG and PDF beside it for a paper (docs/engine.md, *The report*).

Importing this package is cheap: matplotlib is imported only when a report is drawn.
"""

from .page import write_report

__all__ = ["write_report"]
