"""``explain.html``: one self-contained page drawing explain.json's numbers. No server, no CDN,
no request of any kind (its Content-Security-Policy forbids them): it opens from a USB stick or
an e-mail attachment. A step slider and a play button move through the sequence; every panel
follows. Steps count from 1 on the page.
"""

from __future__ import annotations

import html
import json

STATIC = "web/static"  # explain.css and explain.js, shipped with the package


def _asset(name: str) -> str:
    from importlib import resources

    return resources.files("seqmnist").joinpath(STATIC, name).read_text()


BODY = """
<h1 id="title"></h1>
<div class="bar"><label>Image and model <select id="pick"></select></label></div>
<div class="bar" id="stepper">
  <button id="play">Play</button>
  <input id="step" type="range" min="1" max="1" value="1">
  <span id="step-label"></span> <span id="decided" class="muted"></span>
</div>
<div class="panels">
  <div class="panel"><h2>The input, as the model reads it</h2><canvas id="input"></canvas>
    <p>Bright: read so far; the marker is the current step. Rows are read top to bottom,
    columns left to right, pixels one by one.</p></div>
  <div class="panel"><h2>In reading order</h2><canvas id="reading"></canvas>
    <p>The permuted view reads the same pixels in a fixed random order, shown here row by row:
    neighbouring steps are far apart in the picture, which is why it is hard.</p></div>
  <div class="panel"><h2>Where the evidence is (occlusion map)</h2><canvas id="saliency"></canvas>
    <p>Red: covering this patch (4 x 4 pixels) lowers the answer's probability; blue: raises it.
    The same map for every model, the CNN included, so they can be compared.</p></div>
</div>
<p id="no-steps" class="muted">This model reads the whole image at once: it has no steps, so only
the input and its occlusion map are shown.</p>
<div class="panel" id="belief-panel"><h2>Belief after each step</h2><canvas id="belief"></canvas>
  <p>Rows are classes (<span id="belief-labels"></span>), columns steps; darker is more
  probable. Orange: the current step. Green: the step from which the final answer stays on
  top.</p><p id="belief-now"></p></div>
<div class="panel" id="steps-panel"><h2>Which steps mattered</h2>
  <canvas id="occlusion"></canvas><p id="occlusion-now"></p>
  <p>Occlusion: the answer's probability minus its probability with that one step set to
  zero.</p>
  <canvas id="attribution"></canvas><p id="attribution-now"></p>
  <p>Integrated gradients (Captum) from an all-zero input, summed over each step's features:
  how much of the answer's score each step contributes.</p></div>
<div class="panel" id="states-panel"><h2>Inside the model at each step</h2><div id="states"></div>
  <p>Hidden (h) and cell (c) states: red positive, blue negative; gates from 0 (white) to 1
  (dark); units ordered so that structure shows (the last layer's by the class they feed most).
  Attention: where each step looks among the steps read so far. State-space layers: the size of
  each channel's state.</p></div>
"""


def render(images: list[dict], inline: bool = False, title: str = "seqmnist explain") -> str:
    """The page for explain.json's ``images``; ``inline``: for a notebook cell, the same page in
    an iframe of its own (so that several explanations in one notebook do not mix)."""
    data = json.dumps({"images": images}, allow_nan=False, separators=(",", ":"))
    data = data.replace("</", "<\\/")  # the JSON cannot close its script element
    body = (f"<style>{_asset('explain.css')}</style>{BODY}<script id=\"explain-data\" "
            f"type=\"application/json\">{data}</script><script>{_asset('explain.js')}</script>")
    if inline:
        page = render(images, title=title)
        return (f"<iframe srcdoc=\"{html.escape(page, quote=True)}\" style=\"width:100%;"
                "height:1100px;border:0\" sandbox=\"allow-scripts\"></iframe>")
    csp = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
           "img-src data:")
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{csp}\">"
            f"<title>{html.escape(title)}</title><link rel=\"icon\" href=\"data:,\"></head>"
            f"<body>{body}</body></html>\n")
