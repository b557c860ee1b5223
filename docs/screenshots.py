"""Make the README's screenshots in docs/ with the pretrained runs shipped in the package, drawn
by Debian's Chromium at a desktop width and a phone width:

- explain-lstm.png, explain-cnn.png, explain-phone.png: explain.html on test image 0 (a 7);
- serve.png, serve-phone.png: the draw-a-digit page after a hand-drawn 7.

    python docs/screenshots.py DATA_DIR   # DATA_DIR holds MNIST's four IDX files
"""

import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import expect, sync_playwright

from seqmnist.reports.explainer import explain_set, write_explanations
from seqmnist.web import create_app, resolve_runs

DOCS = Path(__file__).resolve().parent
DESKTOP = {"width": 1300, "height": 1000}
PHONE = {"width": 390, "height": 844}
SEVEN = [(70, 55), (215, 55), (150, 150), (115, 245)]  # a bar, then the stem


def explain_shots(tab, data_dir: str) -> None:
    runs = ["pretrained:lstm", "pretrained:cnn"]
    explained = explain_set(runs, indices=[0], data_dir=data_dir, progress=False)
    page = write_explanations(explained, Path(tempfile.mkdtemp()) / "explained")["html"]
    tab.set_viewport_size(DESKTOP)
    tab.goto(page.resolve().as_uri())
    tab.locator("#x-step").fill("14")
    tab.screenshot(path=str(DOCS / "explain-lstm.png"), full_page=True)
    tab.set_viewport_size(PHONE)
    tab.screenshot(path=str(DOCS / "explain-phone.png"), full_page=True)
    tab.set_viewport_size(DESKTOP)
    tab.select_option("#x-pick", index=1)
    tab.screenshot(path=str(DOCS / "explain-cnn.png"), full_page=True)


def serve_shots(tab) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runs = resolve_runs(["pretrained:lstm", "pretrained:cnn"])
    server = uvicorn.Server(uvicorn.Config(create_app(runs), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    tab.set_viewport_size({"width": 1280, "height": 900})
    tab.goto(f"http://127.0.0.1:{port}/")
    box = tab.locator("#pad").bounding_box()
    tab.mouse.move(box["x"] + SEVEN[0][0], box["y"] + SEVEN[0][1])
    tab.mouse.down()
    for x, y in SEVEN[1:]:
        tab.mouse.move(box["x"] + x, box["y"] + y, steps=12)
    tab.mouse.up()
    expect(tab.locator('.card[data-model="lstm"] .prediction')).to_have_text("7", timeout=15000)
    expect(tab.locator("#inside")).to_be_visible(timeout=15000)
    tab.screenshot(path=str(DOCS / "serve.png"))
    tab.set_viewport_size(PHONE)
    tab.screenshot(path=str(DOCS / "serve-phone.png"))
    server.should_exit = True


def main(data_dir: str) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                    args=["--no-sandbox", "--disable-gpu",
                                          "--disable-background-networking"])
        tab = browser.new_page()
        explain_shots(tab, data_dir)
        serve_shots(tab)
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1])
