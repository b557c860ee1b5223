"""A real browser: headless Chromium (Debian's) driven by Playwright draws a 7 on the page and
reads both models' answers. Needs `apt-get install chromium` and `pip install playwright`;
skipped without them unless SEQMNIST_REQUIRE_BROWSER=1 (as in CI), where it fails instead."""

import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]


def _require(server: bool = True):
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install playwright)")
    if not Path(CHROMIUM).exists():
        missing.append("chromium (apt-get install chromium)")
    try:
        if server:
            import uvicorn  # noqa: F401
    except ImportError:
        missing.append("uvicorn (pip install 'seqmnist[web]')")
    if missing:
        if os.environ.get("SEQMNIST_REQUIRE_BROWSER"):
            pytest.fail("browser test needs: " + ", ".join(missing))
        pytest.skip("browser test needs: " + ", ".join(missing))


@pytest.fixture(scope="module")
def good_runs(real_mnist, tmp_path_factory):
    """Models good enough to read a hand-drawn digit (~97% measured), trained in seconds, once
    the browser is known to be there."""
    _require()
    from seqmnist import TrainConfig, train

    out = tmp_path_factory.mktemp("browser-runs")
    configs = [TrainConfig(model="lstm", epochs=1, batch_size=128, lr=4e-3, schedule="onecycle"),
               TrainConfig(model="cnn", epochs=1, limit=20000, batch_size=128, lr=1e-3)]
    return [train(c, out=out, dataset=real_mnist, progress=False, log=lambda *_: None).path
            for c in configs]


@pytest.fixture(scope="module")
def server(good_runs):
    _require()
    import uvicorn

    from seqmnist.web import create_app, resolve_runs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(resolve_runs(good_runs)), host="127.0.0.1",
                                        port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "server did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


PHONE = {"width": 390, "height": 844}


def fits_a_phone(page, shot: Path) -> None:
    """At a phone's width the page is one column no wider than the screen (nothing to scroll
    sideways), and its screenshot is taken there."""
    page.set_viewport_size(PHONE)
    # reading scrollWidth lays the page out at the new width first
    wider = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert wider <= 1, f"{wider}px wider than a {PHONE['width']}px phone"
    page.screenshot(path=str(shot.with_name(shot.stem + "-phone.png")), full_page=True)


def draw(page, strokes):
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        x0, y0 = stroke[0]
        page.mouse.move(box["x"] + x0, box["y"] + y0)
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x, box["y"] + y, steps=12)
        page.mouse.up()


@pytest.mark.browser
def test_draw_a_seven_and_both_models_say_seven(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server + "/")
        expect(page.locator(".card")).to_have_count(2)
        draw(page, [[(70, 55), (215, 55), (150, 150), (115, 245)]])  # a 7: bar, then stem
        lstm = page.locator('.card[data-model="lstm"] .prediction')
        cnn = page.locator('.card[data-model="cnn"] .prediction')
        expect(lstm).to_have_text("7", timeout=15000)
        expect(cnn).to_have_text("7", timeout=15000)
        expect(page.locator('.card[data-model="lstm"] canvas.belief')).to_be_visible()
        expect(page.locator('.card[data-model="lstm"] .sure')).to_contain_text("row")
        # the inside view of the same drawing, live: the explainer's panels for each model
        expect(page.locator("#inside")).to_be_visible(timeout=15000)
        expect(page.locator("#x-title")).to_contain_text("reading your image")
        expect(page.locator("#x-pick option")).to_have_count(2)
        assert page.locator('.card[data-model="cnn"] canvas.belief').count() == 0
        # The belief has one orientation everywhere: a row per class (labelled), a column per
        # step, as in the inside view; pointing at a column highlights the row of the image read.
        belief = page.locator('.card[data-model="lstm"] canvas.belief')
        assert (belief.get_attribute("width"), belief.get_attribute("height")) == ("28", "10")
        expect(page.locator('.card[data-model="lstm"] .class-axis span')).to_have_count(10)
        expect(page.locator('.card[data-model="lstm"] .class-axis span').nth(3)).to_have_text("3")
        strip = belief.bounding_box()
        page.mouse.move(strip["x"] + strip["width"] * 0.98, strip["y"] + 20)
        expect(page.locator('.card[data-model="lstm"] .row-detail')).to_contain_text(
            "After row 28 of 28")
        expect(page.locator("#pretrained-note")).to_be_hidden()  # the user's own runs: no note
        shot = Path(os.environ.get("SEQMNIST_SCREENSHOT") or tmp_path / "page.png")
        page.screenshot(path=str(shot), full_page=True)
        expect(page.locator('.card[data-model="lstm"] .step-axis span').first).to_have_text("row 1")
        fits_a_phone(page, shot)
        page.set_viewport_size({"width": 1280, "height": 900})
        page.click("#clear")
        expect(page.locator(".card.stale")).to_have_count(2)
        draw(page, [[(140, 140), (141, 141)]])  # a dot is not a digit
        expect(page.locator("#status")).to_have_text("Draw a digit: that is only a dot.",
                                                     timeout=15000)
        browser.close()
    assert not errors, errors
    assert shot.stat().st_size > 10_000


@pytest.mark.browser
def test_explain_html_works_offline_from_a_file(small_runs, small_mnist_dir, tmp_path):
    """explain.html opened from file:// with every request that is not the file itself refused:
    no console error, no request leaves the page, the slider moves every panel to its step, and
    the CNN's entry shows its occlusion map without sequence panels."""
    _require(server=False)
    pytest.importorskip("captum")
    from playwright.sync_api import expect, sync_playwright

    from seqmnist.reports.explainer import explain_set, write_explanations

    explanations = explain_set([small_runs["lstm"], small_runs["cnn"]], indices=[0, 1],
                               data_dir=small_mnist_dir, progress=False)
    page_file = write_explanations(explanations, tmp_path / "explained")["html"]
    requests, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        context = browser.new_context(viewport={"width": 1300, "height": 1000},
                                      offline=True)
        page = context.new_page()

        def gate(route):
            if route.request.url.startswith("file://"):
                route.continue_()
            else:
                requests.append(route.request.url)
                route.abort()

        page.route("**/*", gate)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(page_file.resolve().as_uri())
        expect(page.locator("#x-title")).to_contain_text("lstm (rows view) reading test image 0")
        expect(page.locator("#x-step-label")).to_have_text("step 1 of 28")
        page.locator("#x-step").fill("20")
        expect(page.locator("#x-step-label")).to_have_text("step 20 of 28")
        expect(page.locator("#x-belief-now")).to_contain_text("After step 20 of 28, the most "
                                                              "probable class is")
        # the belief's rows are labelled with the classes, the scatter has a legend, and the
        # "when it knows" line says over how many test images it was counted
        expect(page.locator("#x-belief-labels div")).to_have_count(10)
        expect(page.locator("#x-belief-labels div").nth(3)).to_have_text("3")
        expect(page.locator("#x-pca-legend span")).to_have_count(10)
        # the stretches-of-steps heatmap: a labelled row per class, as the belief
        expect(page.locator("#x-importance-labels div")).to_have_count(10)
        assert page.locator("#x-importance").evaluate("c => c.height") == 10 * 14
        expect(page.locator("#x-median-n")).to_have_text(re.compile(r"^\d+$"))
        expect(page.locator("#x-occlusion-now")).to_contain_text("occlusion at step 20:")
        expect(page.locator("#x-states canvas")).to_have_count(10)  # 2 layers x h, c and 3 gates
        expect(page.locator("#x-dataset-panel")).to_be_visible()
        expect(page.locator("#x-median")).to_contain_text("step")
        shot = Path(os.environ.get("SEQMNIST_EXPLAIN_SCREENSHOT") or tmp_path / "explain.png")
        page.screenshot(path=str(shot), full_page=True)
        page.click("#x-play")
        expect(page.locator("#x-step-label")).to_have_text("step 28 of 28", timeout=15000)
        page.select_option("#x-pick", index=1)  # image 0 read by the CNN
        expect(page.locator("#x-title")).to_contain_text("cnn (image view)")
        expect(page.locator("#x-stepper")).to_be_hidden()
        expect(page.locator("#x-no-steps")).to_be_visible()
        expect(page.locator("#x-input-note")).to_have_text(
            "The image as the model sees it: all of it at once, with no steps.")
        expect(page.locator("#x-dataset-panel")).to_be_hidden()
        expect(page.locator("#x-saliency")).to_be_visible()
        cnn_shot = shot.with_name(shot.stem + "-cnn.png")
        page.screenshot(path=str(cnn_shot), full_page=True)
        page.select_option("#x-pick", index=0)
        fits_a_phone(page, shot)
        browser.close()
    assert not errors, errors
    assert not requests, requests
    assert shot.stat().st_size > 10_000


@pytest.mark.browser
def test_explain_html_draws_whatever_its_runs_are_named(small_runs, small_mnist_dir, tmp_path):
    """A run folder named `<!--<script>` (it used to make the parser swallow explain.js) and
    one named `constructor` (it used to find Object.prototype's member): the page still draws
    both, with no error, in a real browser."""
    _require(server=False)
    pytest.importorskip("captum")
    from playwright.sync_api import expect, sync_playwright

    from seqmnist.reports.explainer import explain_set, write_explanations

    hostile = tmp_path / "<!--<script>"
    shutil.copytree(small_runs["lstm"], hostile)
    plain = tmp_path / "constructor"
    shutil.copytree(small_runs["cnn"], plain)
    explained = explain_set([hostile, plain], indices=[0], data_dir=small_mnist_dir,
                            progress=False)
    page_file = write_explanations(explained, tmp_path / "explained")["html"]
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(page_file.resolve().as_uri())
        expect(page.locator("#x-title")).to_contain_text("lstm (rows view) reading test image 0")
        expect(page.locator("#x-dataset-panel")).to_be_visible()
        page.select_option("#x-pick", index=1)
        expect(page.locator("#x-title")).to_contain_text("cnn (image view)")
        expect(page.locator("#x-dataset-panel")).to_be_hidden()
        browser.close()
    assert not errors, errors
