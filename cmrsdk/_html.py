"""Self-contained HTML pages: one file, images inlined as data URIs, no script, nothing fetched.

A page written here opens from a USB stick on a reading-room PC without network access, and
prints on A4: the styles are inline, the images are PNG data URIs and the charts inline SVG.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Iterable, Sequence

from .io._atomic import atomic_path

__all__ = ["escape", "img_tag", "table", "page", "write_page", "markdown_to_html"]

_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1b1f24;
       margin: 0 auto; max-width: 1100px; padding: 16px 24px 40px; background: #fff; }
h1 { font-size: 22px; margin: 4px 0 2px; } h2 { font-size: 17px; margin: 26px 0 8px; border-bottom: 1px solid #d0d7de; padding-bottom: 3px; }
h3 { font-size: 15px; margin: 16px 0 6px; }
.sub { color: #57606a; margin: 0 0 10px; }
.banner { background: #fff8c5; border: 1px solid #d4a72c; padding: 6px 10px; border-radius: 4px; margin: 8px 0; }
table { border-collapse: collapse; margin: 6px 0 10px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; }
.low, .high { font-weight: 600; color: #b42318; }
.ok { color: #1a7f37; } .warn { color: #9a6700; }
figure { margin: 8px 0 14px; } figcaption { color: #57606a; font-size: 12px; }
img { max-width: 100%; height: auto; display: block; }
.grid { display: flex; flex-wrap: wrap; gap: 16px; } .grid > * { flex: 1 1 420px; }
.small { font-size: 12px; color: #57606a; } code { font-size: 12px; }
ul.flags { margin: 4px 0; padding-left: 20px; }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  h2 { break-after: avoid; } figure, table, svg { break-inside: avoid; }
  .banner { border-color: #999; background: none; }
}
"""


def escape(value: object) -> str:
    """Text made safe for HTML element content and attribute values."""
    return html.escape(str(value), quote=True)


def img_tag(png: bytes, alt: str, *, width: int | None = None) -> str:
    """An <img> holding ``png`` as a data URI (nothing is fetched when the page opens)."""
    size = f' width="{int(width)}"' if width else ""
    return f'<img alt="{escape(alt)}"{size} src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def table(
    header: Sequence[str], rows: Iterable[Sequence[object]], *, numeric: Sequence[int] = (), cls: str = ""
) -> str:
    """An HTML table; cells are escaped unless given as ``("html", markup)`` tuples."""

    def cell(value: object, index: int) -> str:
        css = ' class="num"' if index in numeric else ""
        if isinstance(value, tuple) and len(value) == 2 and value[0] == "html":
            return f"<td{css}>{value[1]}</td>"
        return f"<td{css}>{escape(value)}</td>"

    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v, i) for i, v in enumerate(row)) + "</tr>" for row in rows)
    klass = f' class="{escape(cls)}"' if cls else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, body: str) -> str:
    """A whole HTML document around ``body``, with the shared styles."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # no network, even by accident: a page that tried to fetch would be blocked by its own policy
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def write_page(path: str | Path, title: str, body: str) -> Path:
    """Write the page atomically (UTF-8); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(page(title, body), encoding="utf-8")
    return path


_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def markdown_to_html(markdown: str, base_dir: str | Path) -> str:
    """The Markdown subset the evaluation report uses (headings, paragraphs, pipe tables, images) as HTML.

    Images are read from ``base_dir`` and inlined; an image that is missing stays a link.
    """
    base_dir = Path(base_dir)
    out: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line:
            i += 1
        elif line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 6)
            out.append(f"<h{level}>{escape(line[level:].strip())}</h{level}>")
            i += 1
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            rows = [r for r in block[1:] if not all(set(c) <= set("-: ") for c in r)]
            numeric = [j for j in range(len(block[0])) if all(_is_number(r[j]) for r in rows if j < len(r))]
            out.append(table(block[0], rows, numeric=numeric))
        elif (m := _IMAGE.fullmatch(line.strip())) is not None:
            alt, name = m.groups()
            path = base_dir / name
            if path.is_file() and path.suffix.lower() == ".png":
                out.append(f"<figure>{img_tag(path.read_bytes(), alt)}<figcaption>{escape(alt)}</figcaption></figure>")
            else:
                out.append(f"<p>{escape(alt)}: {escape(name)}</p>")
            i += 1
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "|")):
                para.append(lines[i].strip())
                i += 1
            out.append(f"<p>{escape(' '.join(para))}</p>")
    return "\n".join(out)


def _is_number(text: str) -> bool:
    try:
        float(text.replace("–", "nan"))
        return True
    except ValueError:
        return False
