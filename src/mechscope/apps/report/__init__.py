"""The `mechscope report` document: a list of sections, each built by one small function.

A section function takes `(model, context)` and returns a `Section` (or None to leave
itself out); `context` holds what the user asked for (prompt, corrupted prompt, answers).
"""

from mechscope.apps.report.document import Section, render_html, render_json

__all__ = ["Section", "render_html", "render_json"]
