"""A report as a list of blocks (headings, paragraphs, tables, figures, links), written twice
from the same blocks: Markdown with its figures as PNG files beside it, and one self-contained
HTML page with the figures embedded. Every text is escaped in the page (a run's name or a
model's label is text, never markup)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from ..core.fileio import atomic_write


@dataclass(frozen=True)
class Link:
    text: str
    href: str


@dataclass(frozen=True)
class Block:
    """One part of a document: a heading, a paragraph (``kind`` "verdict" or "warning" for the
    two that stand out), a table (cells are text or a Link), figures, or a list of links."""

    kind: str  # heading | paragraph | table | figures | links
    text: str = ""
    style: str = ""
    headers: tuple = ()
    rows: tuple = ()
    items: tuple = ()  # figures: (file, caption, PNG bytes); links: (label, (Link, ...))


def heading(text: str) -> Block:
    return Block("heading", text)


def paragraph(text: str, style: str = "") -> Block:
    return Block("paragraph", text, style)


def table(headers, rows) -> Block:
    return Block("table", headers=tuple(headers), rows=tuple(tuple(r) for r in rows))


def markdown(title: str, blocks: list[Block]) -> str:
    """The document as Markdown (figures linked as the PNG files beside it)."""
    def cell(c) -> str:
        text = f"[{c.text}]({c.href})" if isinstance(c, Link) else str(c)
        return text.replace("|", "\\|") if not isinstance(c, Link) else text

    out = [f"# {title}", ""]
    for b in blocks:
        if b.kind == "heading":
            out += [f"## {b.text}", ""]
        elif b.kind == "paragraph":
            out += [f"> **{b.text}**" if b.style == "warning" else b.text, ""]
        elif b.kind == "table":
            out += ["| " + " | ".join(b.headers) + " |", "|" + " --- |" * len(b.headers)]
            out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in b.rows] + [""]
        elif b.kind == "figures":
            out += [f"![{c}]({f})\n\n*{c}*\n" for f, c, _ in b.items]
        elif b.kind == "links":
            out += [f"- {label}: " + ", ".join(cell(link) for link in links)
                    for label, links in b.items] + [""]
    return "\n".join(out).rstrip("\n") + "\n"


STYLE = """body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.verdict { font-size: 1.15em; background: #f3f7ff; padding: .8em 1em; border-radius: 6px; }
.warning { background: #fff3cd; border: 1px solid #e0b000; padding: .8em 1em; border-radius: 6px;
           font-weight: 600; }
figure { display: inline-block; margin: .5em; vertical-align: top; max-width: 100%; }
figcaption { font-size: .9em; color: #444; }
img { max-width: 100%; }"""


def html_page(title: str, blocks: list[Block]) -> str:
    """The same document as one self-contained HTML page (figures embedded)."""
    esc = html.escape

    def cell(c) -> str:
        return f'<a href="{esc(c.href)}">{esc(c.text)}</a>' if isinstance(c, Link) else esc(str(c))

    parts = [f"<h1>{esc(title)}</h1>"]
    for b in blocks:
        if b.kind == "heading":
            parts.append(f"<h2>{esc(b.text)}</h2>")
        elif b.kind == "paragraph":
            cls = f' class="{b.style}"' if b.style else ""
            parts.append(f"<p{cls}>{esc(b.text)}</p>")
        elif b.kind == "table":
            head = "".join(f"<th>{esc(h)}</th>" for h in b.headers)
            body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>"
                           for r in b.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b.kind == "figures":
            parts.append("".join(
                f'<figure><img alt="{esc(c)}" src="data:image/png;base64,'
                f'{base64.b64encode(data).decode()}"><figcaption>{esc(c)}</figcaption>'
                "</figure>" for _, c, data in b.items))
        elif b.kind == "links":
            parts.append("<ul>" + "".join(
                f"<li>{esc(label)}: " + ", ".join(cell(link) for link in links) + "</li>"
                for label, links in b.items) + "</ul>")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}'
            f"</title>\n<style>\n{STYLE}\n</style></head><body>\n" + "\n".join(parts)
            + "\n</body></html>\n")


def write_document(out: Path, stem: str, title: str, blocks: list[Block],
                   html_too: bool = True) -> None:
    """``out/stem.md`` and (``html_too``) ``out/stem.html``, both from ``blocks``."""
    atomic_write(out / f"{stem}.md", markdown(title, blocks))
    if html_too:
        atomic_write(out / f"{stem}.html", html_page(title, blocks))
