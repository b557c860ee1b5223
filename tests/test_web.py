"""The web API in-process: shapes, status codes and each safety rule provoked."""

import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from seqmnist.core.errors import SeqmnistError
from seqmnist.web import MAX_BODY, create_app, resolve_runs


@pytest.fixture(scope="module")
def client(small_runs):
    app = create_app(resolve_runs(list(small_runs.values())))
    return TestClient(app, base_url="http://127.0.0.1:8000")


def png_of(array: np.ndarray, size=(200, 200)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).resize(size).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def digit_png(small_mnist):
    return png_of(255 - small_mnist.x_test[0])  # dark ink on white, as a drawing


def test_page_and_assets(client):
    page = client.get("/")
    assert page.status_code == 200 and "<canvas id=\"pad\"" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN: works offline
    assert client.get("/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/style.css").status_code == 200
    assert client.get("/../pyproject.toml").status_code == 404
    assert client.get("/static/../../storage.py").status_code == 404


def test_models(client):
    models = client.get("/api/models").json()["models"]
    assert {m["model"] for m in models} == {"lstm", "cnn"}
    for m in models:
        assert set(m) >= {"name", "dataset", "view", "test_accuracy"}


def check_prediction(data):
    assert np.array(data["image"]).shape == (28, 28)
    by_model = {m["model"]: m for m in data["models"]}
    assert set(by_model) == {"lstm", "cnn"}
    for m in by_model.values():
        assert len(m["probabilities"]) == 10 and abs(sum(m["probabilities"]) - 1) < 1e-4
    steps = np.array(by_model["lstm"]["steps"])
    assert steps.shape == (28, 10) and np.allclose(steps.sum(1), 1, atol=1e-4)
    np.testing.assert_allclose(steps[-1], by_model["lstm"]["probabilities"], atol=1e-5)
    assert "steps" not in by_model["cnn"]
    return by_model


def test_predict_raw_png(client, digit_png):
    resp = client.post("/api/predict", content=digit_png, headers={"Content-Type": "image/png"})
    assert resp.status_code == 200
    check_prediction(resp.json())


def test_predict_multipart_and_json(client, digit_png, small_mnist):
    resp = client.post("/api/predict", files={"image": ("d.png", digit_png, "image/png")})
    check_prediction(resp.json())
    resp = client.post("/api/predict", json={"pixels": small_mnist.x_test[0].tolist()})
    data = resp.json()
    assert data["image"] == small_mnist.x_test[0].tolist()  # a 28 x 28 array is used as it is
    check_prediction(data)


@pytest.mark.parametrize("body, ctype, message", [
    (b"not an image", "image/png", "not a supported image"),
    (b"", "image/png", "empty"),
    (b'{"pixels": [[1, 2], [3, 4]]}', "application/json", "28 x 28"),
    (b'{"pixels": "x"}', "application/json", "28 x 28"),
    (b"{nope", "application/json", "JSON body must be"),
    (b"hello", "text/plain", "send image/png"),
])
def test_bad_bodies_are_400(client, body, ctype, message):
    resp = client.post("/api/predict", content=body, headers={"Content-Type": ctype})
    assert resp.status_code == 400 and message in resp.json()["error"]


def test_body_cap_413_declared_and_streamed(client):
    big = b"\0" * (MAX_BODY + 1)
    resp = client.post("/api/predict", content=big, headers={"Content-Type": "image/png"})
    assert resp.status_code == 413

    def chunks():  # no Content-Length: the cap must hold while streaming
        for _ in range(MAX_BODY // 65536 + 2):
            yield b"\0" * 65536
    resp = client.post("/api/predict", content=chunks(), headers={"Content-Type": "image/png"})
    assert resp.status_code == 413


def test_host_header_must_be_ours(client, digit_png):
    resp = client.get("/api/models", headers={"Host": "evil.example:8000"})
    assert resp.status_code == 400
    resp = client.get("/api/models", headers={"Host": "localhost:8000"})
    assert resp.status_code == 200


def test_cross_origin_post_refused(client, digit_png):
    headers = {"Content-Type": "image/png", "Origin": "http://evil.example"}
    assert client.post("/api/predict", content=digit_png, headers=headers).status_code == 403
    headers = {"Content-Type": "image/png", "Sec-Fetch-Site": "cross-site"}
    assert client.post("/api/predict", content=digit_png, headers=headers).status_code == 403
    headers = {"Content-Type": "image/png", "Origin": "http://127.0.0.1:8000"}
    assert client.post("/api/predict", content=digit_png, headers=headers).status_code == 200


def test_no_runs_is_a_clear_message(tmp_path, monkeypatch):
    """No runs of the user's and no pretrained ones (an installation without them): what to
    do, in one message. (With the shipped pretrained runs they are served: test_pretrained.)"""
    from seqmnist.runs import pretrained

    monkeypatch.setattr(pretrained, "FOLDER", tmp_path / "no-pretrained")
    with pytest.raises(SeqmnistError, match="seqmnist compare --epochs 1"):
        resolve_runs(None, tmp_path)


def test_latest_run_per_model_is_chosen(small_runs):
    runs = resolve_runs(None, small_runs["lstm"].parent)
    assert {r.config.model for r in runs} == {"lstm", "cnn"}


def test_a_dot_is_not_a_digit(client):
    dot = np.full((280, 280), 255, np.uint8)
    dot[100:116, 140:156] = 0  # one touch of the brush
    resp = client.post("/api/predict", content=png_of(dot, (280, 280)),
                       headers={"Content-Type": "image/png"})
    assert resp.status_code == 400 and "too little ink" in resp.json()["error"]
    assert "draw a digit" in resp.json()["error"]


def test_page_declares_its_icon_so_loading_it_has_no_404(client):
    page = client.get("/").text
    assert '<link rel="icon" href="data:,">' in page


@pytest.fixture(scope="module")
def live_server(small_runs):
    """The app on a real uvicorn server (TestClient does not reproduce socket behaviour)."""
    import socket
    import threading
    import time

    pytest.importorskip("uvicorn")
    from seqmnist import web

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = web.server(create_app(resolve_runs(list(small_runs.values()))), "127.0.0.1", port)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield port
    srv.should_exit = True
    thread.join(10)


def test_oversized_post_sent_whole_first_still_gets_its_413(live_server):
    """urllib sends the whole body before reading: it must see the 413, not a reset."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{live_server}/api/predict",
                                 data=b"\0" * (3 * MAX_BODY), method="POST",
                                 headers={"Content-Type": "image/png"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=30)
    assert info.value.code == 413 and b"request body over" in info.value.read()


def test_serve_refuses_a_taken_port_before_announcing_it(live_server):
    from seqmnist.core.errors import UsageError
    from seqmnist.web import check_port

    with pytest.raises(UsageError, match=f"cannot listen on 127.0.0.1:{live_server}.*--port"):
        check_port("127.0.0.1", live_server)
    assert UsageError.exit_code == 2


def test_a_client_that_never_finishes_its_headers_is_cut_off(live_server, monkeypatch):
    """Slowloris: headers dribbling in are not waited for beyond the deadline."""
    import socket
    import time

    from seqmnist import web

    monkeypatch.setattr(web, "HEADER_SECONDS", 2.0)
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", live_server), timeout=30) as sock:
        sock.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closed = sock.recv(1024) == b""  # blocks until the server closes the connection
    waited = time.monotonic() - start
    assert closed and web.HEADER_SECONDS - 1 <= waited < web.HEADER_SECONDS + 5


def test_deeply_nested_json_and_bad_models_are_4xx_or_per_model_errors(client, small_runs):
    resp = client.post("/api/predict", content=b"[" * 100_000 + b"]" * 100_000,
                       headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and "nested too deeply" in resp.json()["error"]
    import torch

    from seqmnist.web import predict_all

    runs = resolve_runs(list(small_runs.values()))
    with torch.no_grad():
        for p in runs[0].model.parameters():
            p.fill_(float("nan"))
    data = predict_all(runs, np.pad(np.full((20, 20), 255, np.uint8), 4))
    assert "NaN" in data["models"][0]["error"] and "probabilities" in data["models"][1]


def test_uploads_far_larger_than_a_digit_are_refused_from_the_header(client):
    buf = io.BytesIO()
    Image.new("L", (4000, 4000), 255).save(buf, "PNG")  # a few KB declaring 16 megapixels
    resp = client.post("/api/predict", content=buf.getvalue(), headers={"Content-Type": "image/png"})
    assert resp.status_code == 400 and "resize the image" in resp.json()["error"]


@pytest.mark.parametrize("body, message", [
    (b'{"pixels": [[' + b"1" * 400 + b"]]}", "far too large"),  # an integer over 1.8e308
    (b'{"pixels": [[1e999]]}', "28 x 28"),
    (b'{"pixels": [[NaN]]}', "28 x 28"),
    (b'{"pixels": ' + str([[0] * 28] * 28).encode() + b"}", "blank"),  # an empty canvas
    (b'{"pixels": ' + str([[0] * 28] * 27 + [[0] * 27 + [255]]).encode() + b"}", "a dot"),
])
def test_hostile_pixels_are_400_and_blank_pixels_get_no_guess(client, body, message):
    resp = client.post("/api/predict", content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and message in resp.json()["error"]


def test_an_unexpected_failure_is_one_500_and_one_log_line_per_client(small_runs, monkeypatch,
                                                                      caplog):
    """Whatever goes wrong inside, the client gets a 500 with a short reason and the log gets
    one line for that client, not a traceback per request."""
    import logging

    from seqmnist import web

    app = create_app(resolve_runs(list(small_runs.values())))
    monkeypatch.setattr(web, "predict_all", lambda *_: 1 / 0)
    client = TestClient(app, base_url="http://127.0.0.1:8000")
    with caplog.at_level(logging.ERROR, logger="seqmnist.web"):
        for _ in range(20):
            resp = client.post("/api/predict", json={"pixels": np.pad(
                np.full((20, 20), 255), 4).tolist()})
            assert resp.status_code == 500
            assert resp.json()["error"] == "internal error (ZeroDivisionError)"
    lines = [r for r in caplog.records if r.name == "seqmnist.web"]
    assert len(lines) == 1 and "ZeroDivisionError" in lines[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)


def test_the_inside_view_of_a_drawing_is_every_models_explanation(client, small_mnist):
    pytest.importorskip("captum")
    resp = client.post("/api/explain", json={"pixels": small_mnist.x_test[0].tolist()})
    assert resp.status_code == 200
    by_model = {i["model"]: i for i in resp.json()["images"]}
    assert set(by_model) == {"lstm", "cnn"}
    lstm, cnn = by_model["lstm"], by_model["cnn"]
    assert lstm["index"] is None and lstm["steps"] == 28 and "layer2.c" in lstm["state"]
    assert np.array(lstm["belief"]).shape == (28, 10) and np.array(cnn["saliency"]).shape == (28, 28)
    assert cnn["steps"] is None
    for page in ("/explain.js", "/explain.css", "/explain-body.html"):
        assert client.get(page).status_code == 200
    bad = client.post("/api/explain", content=b"hello", headers={"Content-Type": "text/plain"})
    assert bad.status_code == 400


def test_the_queue_is_bounded_by_the_work_it_holds():
    """Admission by expected seconds: three 25-s explanations do not fit a 60-s budget beside
    each other, a prediction still does; a kind never measured waits for its first answer."""
    from seqmnist.web import Workload

    load = Workload(budget=60, expected={"predict": 0.1})
    first = load.admit("explain")
    assert first == 0.0 and load.admit("explain") is None  # not measured: one at a time
    load.release("explain", first, seconds=25.0)
    costs = [load.admit("explain"), load.admit("explain")]
    assert costs == [25.0, 25.0] and load.admit("explain") is None
    assert load.admit("predict") == 0.1
    load.release("explain", costs[0])  # a request given up: its work leaves the queue
    assert load.admit("explain") == 25.0


def test_an_abandoned_explanation_stops_its_work(live_server, monkeypatch):
    """A client that sends its request and closes the connection at once: the work for it stops
    at its next check instead of running to the end. The fake work below runs until told to stop
    (up to 60 s), so the test does not depend on how fast the machine is."""
    import json
    import socket
    import threading
    import time

    from seqmnist import web
    from seqmnist.reports import explainer

    started, stopped, finished = threading.Event(), threading.Event(), threading.Event()

    def endless(runs, image):
        started.set()
        try:
            for _ in range(600):
                explainer._check()
                time.sleep(0.1)
        except explainer.Cancelled:
            stopped.set()
            raise
        finished.set()
        return {"images": []}

    monkeypatch.setattr(web, "explain_all", endless)
    body = json.dumps({"pixels": np.pad(np.full((20, 20), 255), 4).tolist()}).encode()
    with socket.create_connection(("127.0.0.1", live_server), timeout=30) as sock:
        sock.sendall(b"POST /api/explain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     b"application/json\r\nContent-Length: " + str(len(body)).encode() +
                     b"\r\n\r\n" + body)
        assert started.wait(30)
    assert stopped.wait(30) and not finished.is_set()


def test_the_real_explainer_stops_when_asked(small_runs, small_mnist):
    from seqmnist.reports.explainer import Cancelled, explain, stop_when

    checks = []

    def stop_after_three():
        checks.append(1)
        return len(checks) > 3

    with stop_when(stop_after_three), pytest.raises(Cancelled):
        explain(small_runs["lstm"], 0, dataset=small_mnist)
    assert len(checks) == 4
    assert explain(small_runs["lstm"], 0, dataset=small_mnist).belief is not None  # scoped


@pytest.mark.parametrize("body, ctype", [
    (b"--x\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\nabc\r\n"
     b"--x--\r\n", "multipart/form-data"),  # no boundary in the header
    (b"".join(b"--x\r\nContent-Disposition: form-data; name=\"f%d\"; filename=\"a.png\"\r\n\r\n"
              b"abc\r\n" % i for i in range(2)) + b"--x--\r\n",
     "multipart/form-data; boundary=x"),  # two files
    (b"".join(b"--x\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\nv\r\n" % i
              for i in range(9)) + b"--x--\r\n", "multipart/form-data; boundary=x"),  # fields
])
def test_malformed_multipart_is_a_400_naming_the_problem(client, body, ctype):
    for api in ("/api/predict", "/api/explain"):
        resp = client.post(api, content=body, headers={"Content-Type": ctype})
        assert resp.status_code == 400 and "multipart" in resp.json()["error"], resp.text
