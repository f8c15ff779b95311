"""The one Markdown and LaTeX table renderer of `study compare` and the report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

LATEX_ESCAPES = (
    ("_", r"\_"),
    ("%", r"\%"),
    ("&", r"\&"),
    ("#", r"\#"),
    ("ρ", r"$\rho$"),
    ("γ", r"$\gamma$"),
    ("ε", r"$\varepsilon$"),
    ("Δ", r"$\Delta$"),
)


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped."""
    for char, escaped in LATEX_ESCAPES:
        text = text.replace(char, escaped)
    return text


def markdown_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    cell: Callable[[Any], str] = str,
    right_from: int | None = None,
) -> str:
    """A GitHub-flavoured Markdown table; non-string cells go through ``cell``, ``|`` in cells is
    escaped, and columns from index ``right_from`` on are right-aligned (numbers)."""
    align = [
        "---:" if right_from is not None and i >= right_from else "---" for i in range(len(headers))
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        cells = [c if isinstance(c, str) else cell(c) for c in row]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def latex_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A booktabs ``tabular``: the first column left-aligned text (escaped), the others
    right-aligned cells written as LaTeX already."""
    header = " & ".join(latex_escape(h) for h in headers)
    body = [" & ".join([latex_escape(r[0]), *r[1:]]) + r" \\" for r in rows]
    spec = "l" + "r" * (len(headers) - 1)
    return "\n".join(
        [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", header + r" \\", r"\midrule"]
        + body
        + [r"\bottomrule", r"\end{tabular}"]
    )
