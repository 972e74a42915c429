"""A self-contained report.html from report.md: one file to mail or open offline.

The report is written once, as markdown; this module turns the subset the report uses (headings,
paragraphs, bullet lists, pipe tables, **bold**, `code`, images) into HTML and embeds every image —
PNG charts and GIF animations — as a base64 data URI, so the HTML needs no files beside it.
"""

from __future__ import annotations

import base64
import html
import logging
import re
from pathlib import Path

from hrmlab.fileio import write_text_atomic

log = logging.getLogger(__name__)

MIME = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
        ".svg": "image/svg+xml", ".mp4": "video/mp4"}

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1, h2, h3 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
td.r, th.r { text-align: right; }
img, video { max-width: 100%; border: 1px solid #eee; margin: .4em 0; }
figure { margin: 1em 0; }
figcaption { font-size: 0.9em; color: #555; }
code { background: #f3f3f3; padding: 0 .2em; }
"""

_IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)\)\s*$")


def data_uri(path: Path) -> str | None:
    """The file as a data: URI, or None when it is missing (the report then links the name only)."""
    mime = MIME.get(path.suffix.lower(), "application/octet-stream")
    try:
        payload = base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        log.warning("cannot embed %s: file missing", path)
        return None
    return f"data:{mime};base64,{payload}"


def _inline(text: str) -> str:
    """Escape, then **bold**, `code` and [text](url) links."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", lambda m: f'<a href="{html.escape(m.group(2))}">{m.group(1)}</a>', out)
    return out


def _split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def _table(lines: list[str]) -> str:
    header, rule, *body = lines
    right = [c.strip().endswith(":") and not c.strip().startswith(":") for c in _split_row(rule)]

    def cls(i):
        return ' class="r"' if i < len(right) and right[i] else ""

    parts = ["<table>", "<tr>" + "".join(f"<th{cls(i)}>{_inline(c)}</th>" for i, c in enumerate(_split_row(header))) + "</tr>"]
    for line in body:
        parts.append("<tr>" + "".join(f"<td{cls(i)}>{_inline(c)}</td>" for i, c in enumerate(_split_row(line))) + "</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def _image(alt: str, src: str, base_dir: Path) -> str:
    path = Path(src) if Path(src).is_absolute() else base_dir / src
    uri = data_uri(path) or html.escape(src)
    caption = f"<figcaption>{_inline(alt)}</figcaption>" if alt else ""
    if path.suffix.lower() == ".mp4":
        return f'<figure><video controls loop src="{uri}"></video>{caption}</figure>'
    return f'<figure><img alt="{html.escape(alt)}" src="{uri}">{caption}</figure>'


def markdown_to_html(markdown: str, base_dir: Path, title: str = "hrmlab report") -> str:
    """HTML page for the report's markdown, images embedded from paths relative to `base_dir`."""
    lines = markdown.splitlines()
    body: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            i += 1
            continue
        heading = re.match(r"^(#{1,6})\s+(.*)$", stripped)
        image = _IMAGE.match(stripped)
        if heading:
            level = len(heading.group(1))
            body.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
            i += 1
        elif image:
            body.append(_image(image.group("alt"), image.group("src"), base_dir))
            i += 1
        elif stripped.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[i + 1].strip()):
            block = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                block.append(lines[i])
                i += 1
            body.append(_table(block))
        elif re.match(r"^[-*]\s+", stripped):
            items = []
            while i < len(lines) and re.match(r"^[-*]\s+", lines[i].strip()):
                item = re.sub(r"^[-*]\s+", "", lines[i].strip())
                items.append(f"<li>{_inline(item)}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
        elif stripped.startswith("```"):
            i += 1
            block = []
            while i < len(lines) and not lines[i].strip().startswith("```"):
                block.append(lines[i])
                i += 1
            i += 1
            body.append("<pre>" + html.escape("\n".join(block)) + "</pre>")
        else:
            para = [stripped]  # at least this line, whatever it starts with
            i += 1
            while i < len(lines) and lines[i].strip() and not re.match(r"^(#|\||!\[|[-*]\s|```)", lines[i].strip()):
                para.append(lines[i].strip())
                i += 1
            body.append("<p>" + _inline(" ".join(para)) + "</p>")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_html(markdown: str, out_path: Path, title: str = "hrmlab report") -> Path:
    """Write the self-contained HTML version of `markdown` (images relative to out_path's folder)."""
    out_path = Path(out_path)
    write_text_atomic(out_path, markdown_to_html(markdown, out_path.parent, title))
    return out_path
