"""sharpcal's own report sections, registered in the order report.md shows them (a plugin's
sections come after them, in the order they register)."""

from __future__ import annotations

from study.report import writer
from study.report.sections import SECTIONS
from study.report.sections.posthoc import posthoc_section
from study.report.sections.search import search_section

for _name, _section in (
    ("header", writer.header_section),
    ("partial", writer.partial_notice),
    ("evidence", writer.evidence_notice),
    ("front", writer.front_section),
    ("search", search_section),
    ("comparison", writer.comparison_section),
    ("posthoc", posthoc_section),
    ("methods", writer.methods_section),
    ("trial_intervals", writer.trial_intervals_section),
    ("regimes", writer.regime_section),
    ("ensemble", writer.ensemble_section),
    ("importance", writer.importance_section),
    ("sensitivity", writer.sensitivity_section),
):
    SECTIONS.register(_name, _section)
