"""The ordered list of report sections. Adding a section = adding one function here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mechscope.apps.report.core_sections import CORE_SECTIONS
from mechscope.apps.report.document import Section

SectionFn = Callable[[Any, dict[str, Any]], "Section | None"]


def report_sections() -> list[SectionFn]:
    """Section builders in report order."""
    return [*CORE_SECTIONS]
