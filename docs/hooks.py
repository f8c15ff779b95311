"""MkDocs hook: the manual's tables generated from the code at build time, never copied by hand.

A page asks for one with a marker on a line of its own, replaced when the page is built:

- ``<!-- sharpcal:table settings -->``: every setting of a run, from
  ``trainables.config.TrainConfig.model_fields`` and the settings registered parts declare
  (``trainables.parts.declared_settings()``): name, type, default, description. A field's
  ``description`` is used where it has one, else ``docs/reference/settings.yaml``'s.
- ``<!-- sharpcal:table registry NAME -->``: the parts of one registry of ``REGISTRIES`` (NAME is
  its attribute's name in lower case, e.g. ``methods``): name, title, description, reference,
  origin. ``<!-- sharpcal:table registries -->``: every registry of ``REGISTRIES``, one section
  each.
- ``<!-- sharpcal:table objectives -->``: the metrics a study can optimise, with their directions.
- ``<!-- sharpcal:table layout -->``: every module of the packages and the first sentence of its
  docstring (read with ``ast``: nothing is imported).
- ``<!-- sharpcal:cli -->``: the ``study`` command's help, and each subcommand's.
- ``<!-- sharpcal:include PATH -->``: a file of the repository (``BENCHMARKS.md``), its links
  to ``docs/`` made relative to the manual.

An unknown marker fails the build; a setting with no description is a warning, which
``mkdocs build --strict`` (``make docs``, ``make test``) turns into a failure.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import logging
import os
import re
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DESCRIPTIONS = DOCS / "reference" / "settings.yaml"
PACKAGES = ("study", "trainables", "search_spaces")
if str(ROOT) not in sys.path:  # the tree being built, whatever sharpcal is installed from
    sys.path.insert(0, str(ROOT))

# The registries the manual tables, as "module:ATTRIBUTE": the one list (add a registry here and
# its table appears under every `registries` marker; `registry NAME` markers name one of them).
# Issue 35's, as they land: trainables.methods:METHODS, trainables.losses:LOSSES,
# trainables.models:MODELS, trainables.data:DATASETS, trainables.evaluation:SPLITS,
# trainables.metrics:METRICS, study.analysis.calibrators:CALIBRATORS,
# study.search.schedulers:SCHEDULERS, study.report.sections:SECTIONS.
REGISTRIES: list[str] = [
    "trainables.methods:METHODS",
    "trainables.losses:LOSSES",
    "trainables.models:MODELS",
    "trainables.data:DATASETS",
    "trainables.evaluation:SPLITS",
    "trainables.metrics:METRICS",
    "study.analysis.calibrators:CALIBRATORS",
    "study.search.schedulers:SCHEDULERS",
    "study.report.sections:SECTIONS",
]

# Settings that name a part: their type column lists the registry's names.
NAMED_BY = {
    "method": "trainables.methods:METHODS",
    "loss": "trainables.losses:LOSSES",
    "model": "trainables.models:MODELS",
    "dataset": "trainables.data:DATASETS",
}

MARKER = re.compile(r"^<!-- sharpcal:(?P<what>[a-z]+)(?: (?P<args>[^>]*?))? -->$", re.M)
log = logging.getLogger("mkdocs.hooks.sharpcal")


class MarkerError(ValueError):
    """A marker this hook does not know, or one it cannot fill."""


# --- cells -----------------------------------------------------------------------------------


def cell(text: object) -> str:
    """``text`` as one Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def type_name(annotation: Any) -> str:
    """A setting's type as a reader types it: ``int or none``, ``one of `a`, `b```."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{v}`" for v in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        names = [type_name(a) for a in typing.get_args(annotation) if a is not type(None)]
        optional = type(None) in typing.get_args(annotation)
        return " or ".join(names + (["none"] if optional else []))
    if isinstance(annotation, type):
        if annotation.__module__ == "builtins":
            return {"str": "text", "bool": "true/false"}.get(
                annotation.__name__, annotation.__name__
            )
        return "mapping"  # a nested settings model (the `ood` section)
    return str(annotation)


def default_text(value: Any) -> str:
    """A default as a space file writes it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"`{value}`"
    return repr(value)


# --- the settings table ----------------------------------------------------------------------


def descriptions() -> dict[str, str]:
    """``docs/reference/settings.yaml``: setting -> its description."""
    return yaml.safe_load(DESCRIPTIONS.read_text()) or {}


def settings_rows() -> list[dict[str, str]]:
    """One row per setting: the run's own, then each registered part's."""
    from trainables.config import TrainConfig
    from trainables.parts import declared_settings

    texts = descriptions()
    rows: list[dict[str, str]] = []

    def add(name: str, field: Any, owner: str) -> None:
        text = field.description or texts.get(name)
        if not text:
            log.warning(
                f"setting {name!r} has no description: give its field one "
                f"(Field(description=...)) or add it to {DESCRIPTIONS.relative_to(ROOT)}"
            )
            text = ""
        if owner:
            text = f"{text} ({owner})".strip()
        kind = type_name(field.annotation)
        if name in NAMED_BY:
            names = load_registry(NAMED_BY[name]).names()
            kind = "one of " + ", ".join(f"`{n}`" for n in names)
            kind += " or a timm model name" if name == "model" else ""
        rows.append(
            {
                "name": name,
                "type": kind,
                "default": default_text(field.default),
                "description": text,
            }
        )

    for name, field in TrainConfig.model_fields.items():
        add(name, field, "")
    for name, (registry, part, model) in declared_settings().items():
        if name not in TrainConfig.model_fields:
            add(name, model.model_fields[name], f"{registry.kind} `{part}`'s setting")
    return rows


def settings_table() -> str:
    rows = settings_rows()
    return table(
        ["setting", "type", "default", "description"],
        [[f"`{r['name']}`", r["type"], r["default"], r["description"]] for r in rows],
    )


# --- registries ------------------------------------------------------------------------------


def load_registry(spec: str) -> Any:
    """The registry ``module:ATTRIBUTE`` names."""
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module), attribute)


def registry_table(registry: Any) -> str:
    """Every part of ``registry``: name, title, description, reference, origin."""
    rows = []
    for name, part in registry.items():
        doc = (getattr(part, "__doc__", None) or "").strip().split("\n\n")[0]
        rows.append(
            [
                f"`{name}`",
                getattr(part, "title", "") or "",
                getattr(part, "description", "") or doc,
                getattr(part, "reference", "") or "",
                f"`{registry.origin(name)}`",
            ]
        )
    return table(["name", "title", "description", "reference", "origin"], rows)


def registry_key(spec: str) -> str:
    """The name a marker gives a registry: its attribute in lower case (``methods``)."""
    return spec.partition(":")[2].lower()


def registries_section() -> str:
    if not REGISTRIES:
        return "*(No registry is tabled yet.)*"
    parts = []
    for spec in REGISTRIES:
        registry = load_registry(spec)
        parts.append(f"## {registry.kind.capitalize()}s\n\n`{spec}`\n\n{registry_table(registry)}")
    return "\n\n".join(parts)


# --- objectives, layout, CLI, includes -------------------------------------------------------


def objectives_table() -> str:
    from trainables.metrics import objectives as o

    def family(name: str) -> str:
        if name in o.ACCURACY_METRICS:
            return "accuracy"
        return "calibration" if name in o.CALIBRATION_METRICS else "cost"

    rows = [
        [
            f"`{name}`",
            "maximised" if direction == "max" else "minimised",
            family(name),
            "yes" if name in o.DEFAULT_METRICS else "",
            f"{o.DIVERGED_METRICS[name]:.4g}" if name in o.DIVERGED_METRICS else "measured",
        ]
        for name, direction in o.DIRECTIONS.items()
    ]
    return table(["metric", "direction", "family", "default objective", "a diverged trial"], rows)


def modules() -> Iterator[tuple[str, str]]:
    """(dotted module name, first sentence of its docstring) of every module of ``PACKAGES``."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            first = " ".join(doc.split("\n\n")[0].split())
            yield name, first


def layout_table() -> str:
    rows = [[f"`{name}`", text.replace("``", "`")] for name, text in modules()]
    return table(["module", "what it is"], rows)


@contextlib.contextmanager
def _columns(width: int) -> Iterator[None]:
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("COLUMNS")
        else:
            os.environ["COLUMNS"] = saved


def cli_reference() -> str:
    from study.cli.main import _parser

    with _columns(100):
        parser = _parser()
        sub = parser._subparsers._group_actions[0]  # noqa: SLF001 - argparse has no API for it
        parts = [f"```text\n{parser.format_help().rstrip()}\n```"]
        for name, command in sub.choices.items():
            parts.append(f"## `study {name}`\n\n```text\n{command.format_help().rstrip()}\n```")
    return "\n\n".join(parts)


def include(path: str) -> str:
    """A repository file, its ``docs/`` links made relative to the manual's root."""
    file = (ROOT / path).resolve()
    if not file.is_relative_to(ROOT) or not file.is_file():
        raise MarkerError(f"include {path}: no such file in the repository")
    return re.sub(r"\]\(docs/", "](", file.read_text())


# --- the hook --------------------------------------------------------------------------------


def render(what: str, args: str) -> str:
    """What marker ``<!-- sharpcal:WHAT ARGS -->`` is replaced with."""
    words = args.split()
    if what == "table" and words == ["settings"]:
        return settings_table()
    if what == "table" and words == ["objectives"]:
        return objectives_table()
    if what == "table" and words == ["layout"]:
        return layout_table()
    if what == "table" and words == ["registries"]:
        return registries_section()
    if what == "table" and len(words) == 2 and words[0] == "registry":
        known = {registry_key(spec): spec for spec in REGISTRIES}
        if words[1] not in known:
            raise MarkerError(
                f"no registry {words[1]!r} in docs/hooks.py's REGISTRIES "
                f"(known: {', '.join(known) or 'none'})"
            )
        return registry_table(load_registry(known[words[1]]))
    if what == "cli" and not words:
        return cli_reference()
    if what == "include" and len(words) == 1:
        return include(words[0])
    raise MarkerError(f"unknown marker <!-- sharpcal:{what} {args} -->")


def expand(markdown: str, where: str = "?") -> str:
    """``markdown`` with every marker replaced."""

    def replace(match: re.Match[str]) -> str:
        try:
            return render(match["what"], match["args"] or "")
        except MarkerError as err:
            raise MarkerError(f"{where}: {err}") from None

    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: fill the page's markers."""
    from mkdocs.exceptions import PluginError

    try:
        return expand(markdown, page.file.src_path)
    except MarkerError as err:
        raise PluginError(str(err)) from None
