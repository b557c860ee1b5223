"""``explain.html``: one self-contained page drawing explain.json's numbers. No server, no CDN,
no request of any kind (its Content-Security-Policy forbids them): it opens from a USB stick or
an e-mail attachment. A step slider and a play button move through the sequence; every panel
follows. Steps count from 1 on the page.
"""

from __future__ import annotations

import html
import json

from ..core.fileio import json_safe

STATIC = "web/static"  # explain.css and explain.js, shipped with the package


def _asset(name: str) -> str:
    from importlib import resources

    return resources.files("seqmnist").joinpath(STATIC, name).read_text()


def embed_json(obj) -> str:
    """``obj`` as JSON that no string inside it can end or change the script element holding
    it: every ``<``, ``>`` and ``&`` is written as its JSON escape (``\\u003c``...), so neither
    ``</script>`` nor ``<!--`` can appear; JSON.parse reads back the same strings. Numbers
    that are not numbers (NaN) become null."""

    text = json.dumps(json_safe(obj), allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(images: list[dict], datasets: dict | None = None, inline: bool = False,
           title: str = "seqmnist explain") -> str:
    """The page for explain.json's ``images``; ``inline``: for a notebook cell, the same page in
    an iframe of its own (so that several explanations in one notebook do not mix)."""
    data = embed_json({"images": images, "datasets": datasets or {}})
    body = (f"<style>{_asset('explain.css')}</style>{_asset('explain-body.html')}"
            f"<script id=\"explain-data\" "
            f"type=\"application/json\">{data}</script><script>{_asset('explain.js')}</script>")
    if inline:
        page = render(images, datasets, title=title)
        return (f"<iframe srcdoc=\"{html.escape(page, quote=True)}\" style=\"width:100%;"
                "height:1100px;border:0\" sandbox=\"allow-scripts\"></iframe>")
    csp = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
           "img-src data:")
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{csp}\">"
            f"<title>{html.escape(title)}</title><link rel=\"icon\" href=\"data:,\"></head>"
            f"<body style=\"margin:1.2em;background:#fafafa\">{body}</body></html>\n")
