"""The report's sections (``SECTIONS``), in the order report.md shows them. Every section has
one signature, ``section(view) -> Section``: it reads the study through the read-only
``StudyView`` (``study.report.view``) and returns its Markdown, its figures and its numbers
(for report.json). The writer (``study.report.writer``) calls them in registration order,
built-ins first, and writes what they return; a section never writes a file itself.

A section of one's own is one file (a plugin)::

    from study.report.sections import Section, register_section

    @register_section("my_section")
    def my_section(view):
        return Section("## My section\\n\\n" + str(len(view.completed)) + " trials")

Importing this module is cheap (no matplotlib, no torch): the built-in sections load lazily.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from trainables.registry import Registry, importer

if TYPE_CHECKING:
    from study.report.view import StudyView


@dataclass
class Section:
    """What a section gives the report.

    Attributes:
        text: its Markdown (a level-2 heading first, by convention); "" leaves it out.
        figures: file name (``pareto.png``) -> a matplotlib ``Figure`` (saved as PNG and
            closed), the ``Path`` of a file already drawn (copied), or a function that draws it
            to the path it is given. The text links them as ``![](name)``.
        data: its numbers, merged into report.json (one top-level key per section, by
            convention).
    """

    text: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


SectionFn = Callable[["StudyView"], Section]
F = TypeVar("F", bound=SectionFn)


def _check(name: str, section: SectionFn) -> None:
    """The section contract (``ValueError``/``TypeError`` with the reason)."""
    if not callable(section):
        raise TypeError("a section is a function section(view) -> Section")
    try:
        inspect.signature(section).bind(None)
    except TypeError:
        raise TypeError("a section takes exactly one argument, the StudyView") from None
    except ValueError:  # a builtin without a signature: accepted, called as section(view)
        pass


SECTIONS: Registry[SectionFn] = Registry(
    "report section", check=_check, load=importer("study.report.sections.builtin")
)


def register_section(name: str) -> Callable[[F], F]:
    """``@register_section("name")`` on a function ``section(view) -> Section``."""
    return SECTIONS(name)  # type: ignore[return-value]


def figure_name(name: object) -> str:
    """``name`` when it is a plain file name (the report directory holds every figure)."""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"a figure's name is a plain file name, not {name!r}")
    return name
