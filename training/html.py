"""Self-contained HTML pages with embedded PNG plots (the model card and the monitoring report)."""

import base64
import html
import io
from collections.abc import Iterable
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
.flag { color: #b00020; font-weight: 600; } .ok { color: #1b7f3b; }
.note { color: #555; font-size: .9em; } img { max-width: 100%; }
"""


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend (no display on servers)."""
    try:
        import matplotlib
    except ImportError as exc:  # the optional dependency group
        raise ImportError(
            "plots need the monitoring extra: pip install -e '.[monitoring]'"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(fig: Any, alt: str) -> str:
    """An <img> with the figure as an embedded PNG; closes the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table(header: Iterable[Any], rows: Iterable[Iterable[Any]]) -> str:
    """An HTML table; cells are escaped unless they are Markup."""
    head = "".join(f"<th>{cell(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class Markup(str):
    """Text already in HTML."""


def cell(value: Any) -> str:
    if isinstance(value, Markup):
        return value
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
