"""The study report as one self-contained HTML page (figures embedded as data URIs), for the
MLflow UI's artifact view, which shows an HTML artifact as a page but cannot follow links to
other artifacts. The content is report.md's, rendered by Python-Markdown.

The page is shown inside the MLflow UI, and report.md carries text the report does not control
(the space's ``description``, setting values, plugin names, file names in notes). Python-Markdown
passes raw HTML through (its ``safe_mode`` is gone since 3.0), so the rendered body goes through
``nh3`` (the Rust ``ammonia`` sanitiser) with an allow-list: the tags Markdown's tables, lists,
quotes and emphasis produce; no script, style, iframe, form or event attribute; links only to
http(s) and mailto; ``style`` only ``text-align`` on table cells; an image only when its source
is one of the report's own figures (a PNG file name in the report directory), which is then
embedded. Anything else is dropped or kept as text."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

HTML_FILE = "report.html"
_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70rem; margin: 1.5rem auto; padding: 0 1rem;
       color: #1b1b1b; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.55rem; }
th { background: #f3f3f3; }
td { font-variant-numeric: tabular-nums; }
img { max-width: 100%; }
code { background: #f3f3f3; padding: 0 0.2rem; }
"""
_FIGURE = re.compile(r"[^\"/\\:<>&]+\.png")  # a file name in the report directory
_IMAGE = re.compile(r'<img alt="([^"]*)" src="([^"]+)">')
_TAGS = {
    "h1", "h2", "h3", "h4", "h5", "h6", "p", "br", "hr", "blockquote", "pre", "code", "em",
    "strong", "b", "i", "del", "ul", "ol", "li", "a", "img", "table", "thead", "tbody", "tr",
    "th", "td",
}  # fmt: skip
_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"alt", "src"},
    "th": {"style", "align"},
    "td": {"style", "align"},
    "ol": {"start"},
}
_URL_SCHEMES = {"http", "https", "mailto"}


def sanitised(body: str, figures: set[str]) -> str:
    """``body`` (HTML rendered from report.md) with only ``_TAGS`` and ``_ATTRIBUTES`` left,
    links only to ``_URL_SCHEMES`` (or relative), and an ``<img>`` only when its source is one
    of ``figures`` (else the image has no source)."""
    import nh3

    def keep(element: str, attribute: str, value: str) -> str | None:
        if element == "img" and attribute == "src" and value not in figures:
            return None
        return value

    return nh3.clean(
        body,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes=_URL_SCHEMES,
        attribute_filter=keep,
        filter_style_properties={"text-align"},
        link_rel="noopener noreferrer",
    )


def report_html(markdown_text: str, report_dir: Path, title: str) -> str:
    """``markdown_text`` (report.md) as a sanitised HTML page (``sanitised``) whose images
    (``report_dir``'s PNG files) are embedded; each image keeps its file name as ``data-file``
    and, when it has none, as its alt text."""
    import markdown

    figures = {p.name for p in report_dir.glob("*.png") if _FIGURE.fullmatch(p.name)}
    body = sanitised(markdown.markdown(markdown_text, extensions=["tables"]), figures)

    def embed(match: re.Match[str]) -> str:
        alt, name = match.group(1), html.unescape(match.group(2))
        if name not in figures:
            return match.group(0)
        data = base64.b64encode((report_dir / name).read_bytes()).decode()
        return (
            f'<img alt="{alt or html.escape(name)}" data-file="{html.escape(name)}" '
            f'src="data:image/png;base64,{data}">'
        )

    body = _IMAGE.sub(embed, body)
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )
