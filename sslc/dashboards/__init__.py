"""After a search: the offline plotly report of a run (`write_report`) and the figures it is made of."""

from .report import Report, Section, build_report, render_html, write_report

__all__ = ["Report", "Section", "build_report", "render_html", "write_report"]
