"""The study report as one self-contained HTML page (figures embedded as data URIs), for the
MLflow UI's artifact view, which shows an HTML artifact as a page but cannot follow links to
other artifacts. The content is report.md's, rendered by Python-Markdown."""

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
_IMAGE = re.compile(r'<img alt="([^"]*)" src="([^"/:]+\.png)" ?/?>')


def report_html(markdown_text: str, report_dir: Path, title: str) -> str:
    """``markdown_text`` (report.md) as an HTML page whose images (``report_dir``'s PNG files)
    are embedded; each image keeps its file name as ``data-file`` and, when it has none, as
    its alt text."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"])

    def embed(match: re.Match[str]) -> str:
        alt, name = match.group(1) or match.group(2), match.group(2)
        data = base64.b64encode((report_dir / name).read_bytes()).decode()
        return (
            f'<img alt="{html.escape(alt)}" data-file="{html.escape(name)}" '
            f'src="data:image/png;base64,{data}">'
        )

    body = _IMAGE.sub(embed, body)
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )
