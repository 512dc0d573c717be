"""The ordered list of report sections. Adding a section = adding one function here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mechscope.apps.dashboard.views import heatmap_view
from mechscope.apps.report.core_sections import CORE_SECTIONS
from mechscope.apps.report.document import Section, view_box
from mechscope.apps.report.patching import patching_section
from mechscope.apps.report.reading_sections import READING_SECTIONS

SectionFn = Callable[[Any, dict[str, Any]], "Section | None"]


def patching_report_section(model: Any, context: dict[str, Any]) -> Section | None:
    """The resid_pre patching heatmap, when the user gave a corrupted prompt and an answer.

    Example:
        >>> patching_report_section(None, {"prompt": "The Eiffel Tower is in"}) is None   # no corrupted prompt: no section
        True
    """
    if not (context.get("corrupt") and context.get("answer")):
        return None
    part = patching_section(model, context["prompt"], context["corrupt"], context["answer"], context.get("wrong"))
    return Section("patching", part["title"], part["html"] + view_box("patch", "report-patching"), part["json"],
                   views={"/api/patch/report-patching": heatmap_view("report-patching", part["json"])})


def report_sections() -> list[SectionFn]:
    """Section builders in report order.

    Example:
        >>> report_sections()[-1].__name__
        'patching_report_section'
    """
    return [*CORE_SECTIONS, *READING_SECTIONS, patching_report_section]
