"""Make the explainer's screenshots in docs/ (README "Look inside"): an LSTM (one epoch, the
tutorial's architecture, one-cycle) and a CNN (one epoch on 20,000 images) on test image 0, drawn
by explain.html in Debian's Chromium.

    python docs/screenshots.py DATA_DIR   # DATA_DIR holds MNIST's four IDX files
"""

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from seqmnist import TrainConfig, train
from seqmnist.data.datasets import load_dataset
from seqmnist.reports.explainer import explain_set, write_explanations

DOCS = Path(__file__).resolve().parent


def main(data_dir: str) -> None:
    ds = load_dataset("mnist", data_dir)
    work = Path(tempfile.mkdtemp())
    recipes = [TrainConfig(model="lstm", epochs=1, batch_size=128, lr=4e-3, schedule="onecycle"),
               TrainConfig(model="cnn", epochs=1, limit=20000, batch_size=128, lr=1e-3)]
    runs = [train(c, out=work, dataset=ds, progress=False, log=lambda *_: None).path
            for c in recipes]
    explained = explain_set(runs, indices=[0], data_dir=data_dir, progress=False)
    page = write_explanations(explained, work / "explained")["html"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                    args=["--no-sandbox", "--disable-gpu",
                                          "--disable-background-networking"])
        tab = browser.new_page(viewport={"width": 1300, "height": 1000})
        tab.goto(page.resolve().as_uri())
        tab.locator("#x-step").fill("14")
        tab.screenshot(path=str(DOCS / "explain-lstm.png"), full_page=True)
        tab.select_option("#x-pick", index=1)
        tab.screenshot(path=str(DOCS / "explain-cnn.png"), full_page=True)
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1])
