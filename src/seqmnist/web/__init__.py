"""The draw-a-digit page: ``seqmnist serve`` (extra ``seqmnist[web]``: Starlette on uvicorn).

    GET  /              the page (plain HTML, CSS and JavaScript shipped in the package)
    GET  /api/models    the loaded models
    POST /api/predict   an image (raw image/png or image/jpeg body, or multipart field "image"),
                        or JSON {"pixels": 28 x 28 numbers 0-255, white ink on black}
    POST /api/explain   the same body: every model's inside view of it (explain.json's entries)

Safe by default: binds 127.0.0.1, bodies over 2 MB get 413 before being read whole, the Host header
must name this server (against DNS rebinding), cross-origin POSTs are refused, and no endpoint reads
a path the client chose.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
import time
from importlib import resources
from pathlib import Path

import numpy as np

from ..core.errors import CheckpointError, ImageError, SeqmnistError, UsageError
from ..core.fileio import dumps
from ..data.images import decode_image, ink, prepare_array
from ..data.views import VIEWS
from ..evaluation.predict import predict_arrays
from ..models.registry import get_entry
from ..reports.explainer import Cancelled, explain, stop_when
from ..runs import pretrained
from ..runs.storage import Run, latest_runs, load_run

MAX_BODY = 2 * 1024 * 1024
# A digit needs far fewer pixels than a photo has: larger uploads are refused from the header,
# before any decoding (a small PNG can declare 16 megapixels and cost 0.2 s of CPU to decode).
MAX_PIXELS = 2_000_000
# Inference runs in worker threads, WORKERS at a time; at most QUEUE requests wait for one, and
# the next gets 503 with Retry-After at once, so a burst cannot stall the server for everyone.
WORKERS = 2
QUEUE = 16
RETRY_AFTER = "1"
# The queue is bounded by the work it holds as well: the expected seconds of every request
# admitted and not yet answered stay under WORK_SECONDS (a pixel-view explanation can take 20 s,
# a prediction milliseconds). A kind of request never measured yet is admitted one at a time.
WORK_SECONDS = 60.0
# A request body must arrive within this many seconds (slow clients cannot hold a connection).
BODY_SECONDS = 10.0
CONNECTIONS = 64
HEADER_SECONDS = 10.0
# A refused body is read and dropped up to this much (or this long) before the 413 is sent, so a
# client that sends its whole body before reading gets the 413 instead of a reset connection.
DRAIN_BYTES = 16 * MAX_BODY
DRAIN_SECONDS = 5.0
LOOPBACK = ["127.0.0.1", "localhost", "::1", "[::1]"]
# An unexpected failure is logged once per client address (at most LOGGED addresses are kept),
# never once per request: no input can flood the log.
LOGGED = 1024
log = logging.getLogger("seqmnist.web")
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8"),
          # the inside view, the same files explain.html is made of
          "/explain.js": ("explain.js", "text/javascript; charset=utf-8"),
          "/explain.css": ("explain.css", "text/css; charset=utf-8"),
          "/explain-body.html": ("explain-body.html", "text/html; charset=utf-8")}


class BodyTooLarge(Exception):
    pass


class Workload:
    """The work the server holds: the expected seconds of each request admitted and not yet
    answered. Each kind's expectation is the mean of its last measured times; a kind not yet
    measured is admitted only when no other request of its kind is pending."""

    def __init__(self, budget: float = WORK_SECONDS, expected: dict[str, float] | None = None):
        self.budget, self.pending = budget, 0.0
        self.expected: dict[str, float] = dict(expected or {})
        self.unmeasured: dict[str, int] = {}

    def admit(self, kind: str) -> float | None:
        """The cost booked for a new request of ``kind``, or None: refuse it (503)."""
        cost = self.expected.get(kind)
        if cost is None:
            if self.unmeasured.get(kind):
                return None
            self.unmeasured[kind] = 1
            return 0.0
        if self.pending > 0 and self.pending + cost > self.budget:
            return None
        self.pending += cost
        return cost

    def release(self, kind: str, cost: float, seconds: float | None = None) -> None:
        """A request answered (``seconds``: the work it took) or given up."""
        self.pending = max(0.0, self.pending - cost)
        if kind not in self.expected:
            self.unmeasured[kind] = 0
        if seconds is not None:
            old = self.expected.get(kind)
            self.expected[kind] = seconds if old is None else (old + seconds) / 2


class BodyLimit:
    """ASGI middleware: 413 for a declared or streamed body over ``limit`` bytes."""

    def __init__(self, app, limit: int = MAX_BODY):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.responses import JSONResponse

        too_large = JSONResponse({"error": f"request body over {self.limit:,} bytes"}, 413,
                                 headers={"Connection": "close"})
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _drain(receive)
            await too_large(scope, receive, send)
            return
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _drain(receive)
                await too_large(scope, receive, send)


async def _drain(receive) -> None:
    """Read and drop what is left of a request body, within DRAIN_BYTES and DRAIN_SECONDS."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline, seen = loop.time() + DRAIN_SECONDS, 0
    while seen < DRAIN_BYTES:
        left = deadline - loop.time()
        if left <= 0:
            return
        try:
            message = await asyncio.wait_for(receive(), left)
        except asyncio.TimeoutError:
            return
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def resolve_runs(runs: list[str | Path] | None, runs_dir: str | Path = "runs",
                 log=print) -> list[Run]:
    """The runs to serve: those given, else the latest finished run of each model. A run that
    cannot be loaded (its weights NaN, its files disagreeing) is left out with one line saying
    why, and the others are served; none left is an error."""
    paths = [Path(r) for r in runs] if runs else list(latest_runs(runs_dir).values())
    if not paths and not runs and pretrained.names():
        paths = [pretrained.verify(name) for name in pretrained.names()]
        log(f"No runs of your own under {runs_dir}/: serving the pretrained runs shipped with "
            f"seqmnist ({', '.join(pretrained.names())}). Train your own with `seqmnist compare "
            "--preset fast`, and `seqmnist serve` shows them instead.")
    if not paths:
        raise SeqmnistError(f"no finished runs found under {runs_dir}/; make some with:\n"
                            "  seqmnist compare --epochs 1\nthen run `seqmnist serve` again")
    loaded, broken = [], []
    for path in paths:
        try:
            loaded.append(load_run(path))
        except CheckpointError as exc:
            broken.append(str(exc))
            log(f"warning: not served: {exc}")
    if not loaded:
        raise CheckpointError("no run can be served:\n" + "\n".join(broken))
    return loaded


NOT_A_NUMBER = "this model's output is not a number (NaN): its weights are broken; retrain it"


def answers_each_step(run: Run) -> bool:
    """Whether the model answers after every step it reads (the registry and the view say)."""
    return get_entry(run.config.model).steps and VIEWS[run.config.view].kind == "sequence"


def model_info(run: Run) -> dict:
    return dict(name=run.name, model=run.config.model, dataset=run.config.dataset,
                view=run.config.view, test_accuracy=run.metrics.get("test_accuracy"),
                classes=run.classes, recurrent=answers_each_step(run),
                unit=VIEWS[run.config.view].unit, pretrained=pretrained.is_pretrained(run.path))


def predict_all(runs: list[Run], image: np.ndarray) -> dict:
    """Every model's probabilities for one prepared uint8 image; per-row beliefs for row readers.
    A model that cannot answer (its input size cannot hold this drawing, or it gives NaN) says
    so in its own entry instead of failing the request."""
    results = []
    for run in runs:
        info = model_info(run)
        shape = run.image_shape
        try:
            img = image if image.shape == shape else prepare_array(image / 255.0, shape)
            (pred,) = predict_arrays(run, img[None], steps=answers_each_step(run))
            if "steps" in pred:  # the step at which each pixel is read, for the preview
                pred["read_at"] = VIEWS[run.config.view].read_at(*shape, run.config.order_seed).tolist()
        except ImageError as exc:
            results.append({**info, "error": str(exc)})
            continue
        if not np.isfinite(pred["probabilities"]).all():
            results.append({**info, "error": NOT_A_NUMBER})
            continue
        results.append({**info, **pred})
    return {"image": image.tolist(), "models": results}


def explain_all(runs: list[Run], image: np.ndarray) -> dict:
    """Every model's inside view of one prepared uint8 image (explain.json's entries); a model
    that cannot read this image says so in its own entry."""

    images = []
    for run in runs:
        shape = run.image_shape
        try:
            img = image if image.shape == shape else prepare_array(image / 255.0, shape)
            explained = explain(run, img)
        except (ImageError, UsageError) as exc:
            images.append({**model_info(run), "error": str(exc)})
            continue
        if not np.isfinite(explained.probabilities).all():
            images.append({**model_info(run), "error": NOT_A_NUMBER})
            continue
        images.append(explained.to_dict())
    return {"images": images}


async def _read_body(request) -> tuple[str, object]:
    """The request's image as sent: ("pixels", array) or ("image", bytes); raises ImageError.
    Only reads; decoding (CPU work) is left to ``_prepare``, off the event loop."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            pixels = np.asarray(json.loads(await request.body())["pixels"], dtype=np.float64)
        except RecursionError:
            raise ImageError("JSON body nested too deeply") from None
        except OverflowError:  # an integer beyond any float (over ~1.8e308)
            raise ImageError("pixels must be 28 x 28 numbers in 0-255: a number is far too "
                             "large") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ImageError(f'JSON body must be {{"pixels": [[...28 x 28 numbers...]]}} '
                             f'({str(exc)[:100]})') from None
        if pixels.shape != (28, 28) or not np.isfinite(pixels).all() \
                or pixels.min() < 0 or pixels.max() > 255:
            raise ImageError(f"pixels must be 28 x 28 numbers in 0-255, got shape {pixels.shape}")
        return "pixels", np.rint(pixels).astype(np.uint8)
    if ctype == "multipart/form-data":
        from starlette.exceptions import HTTPException
        from starlette.formparsers import MultiPartException

        try:
            async with request.form(max_files=1, max_fields=4) as form:
                upload = form.get("image") or form.get("file")
                if upload is None or isinstance(upload, str):
                    raise ImageError('multipart upload needs a file field named "image"')
                return "image", await upload.read()
        except (HTTPException, MultiPartException) as exc:
            reason = getattr(exc, "detail", None) or getattr(exc, "message", None) or exc
            raise ImageError(f"malformed multipart upload: {reason} (send one file field "
                             'named "image")') from None
        except (KeyError, ValueError, UnicodeError) as exc:
            raise ImageError(f"malformed multipart upload ({type(exc).__name__}: "
                             f"{str(exc)[:100]})") from None
    if ctype.startswith("image/"):
        return "image", await request.body()
    raise ImageError("send image/png, image/jpeg, multipart/form-data or application/json")


async def _while_connected(request, work):
    """``await work(gone)`` while watching the client: ``gone`` (a threading.Event) is set when
    the client closes its connection (after its body, the only message left to receive is the
    disconnect), so the work can stop. Returns its result or raises its own exception."""
    import anyio

    gone = threading.Event()
    outcome: dict = {}

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone.set()

    async with anyio.create_task_group() as watchers:
        watchers.start_soon(watch)
        try:
            outcome["result"] = await work(gone)
        except Exception as exc:  # noqa: BLE001 - raised again below, outside the task group
            outcome["error"] = exc
        finally:
            watchers.cancel_scope.cancel()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _prepare(kind: str, payload) -> np.ndarray:
    """A prepared 28 x 28 uint8 image from what ``_read_body`` returned; raises ImageError."""
    if kind == "pixels":  # used as sent, once it is known to hold a digit's ink (as drawings do)
        ink(payload / 255.0)
        return payload
    return prepare_array(decode_image(payload, "upload", max_pixels=MAX_PIXELS))


def create_app(runs: list[Run], allowed_hosts: list[str] | None = None):
    """The Starlette application serving ``runs``."""
    import anyio
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import ClientDisconnect
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    hosts = list(allowed_hosts or LOOPBACK)
    pages = {path: (resources.files(__package__).joinpath("static", name).read_bytes(), media)
             for path, (name, media) in STATIC.items()}

    async def page(request):
        body, media = pages[request.url.path]
        return Response(body, media_type=media, headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:",
            "X-Content-Type-Options": "nosniff"})

    async def models(request):
        return JSONResponse({"models": [model_info(r) for r in runs]})

    limiter = anyio.CapacityLimiter(WORKERS)
    state = {"pending": 0}
    load = Workload(expected={"predict": 0.1})  # every model's answer to one image: cheap
    logged: set[str] = set()

    def failed(request, exc: Exception) -> Response:
        """An unexpected error: 500 with a short reason; one log line per client, ever."""
        client = request.client.host if request.client else "?"
        if client not in logged and len(logged) < LOGGED:
            logged.add(client)
            log.error("seqmnist serve: a request from %s failed: %s: %s (further failures from "
                      "this client are not logged)", client, type(exc).__name__, str(exc)[:200])
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, 500)

    def work(kind: str, payload, stop) -> dict:
        return predict_all(runs, _prepare(kind, payload))

    def look_inside(kind: str, payload, stop) -> dict:

        with stop_when(stop):  # in the worker thread: explanations stop once the client left
            return explain_all(runs, _prepare(kind, payload))

    async def predict(request):
        return await answer(request, "predict", work)

    async def inside(request):
        return await answer(request, "explain", look_inside)

    def timed(job, kind, payload, stop, took):
        if stop():  # given up while it waited for a worker
            raise Cancelled("the client went away")
        start = time.perf_counter()
        result = job(kind, payload, stop)
        took.append(time.perf_counter() - start)
        return result

    async def answer(request, name: str, job):
        origin = request.headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host") \
                or request.headers.get("sec-fetch-site") == "cross-site":
            return JSONResponse({"error": "cross-origin requests are refused"}, 403)
        cost = load.admit(name) if state["pending"] < WORKERS + QUEUE else None
        if cost is None:
            return JSONResponse({"error": "busy: too much work waiting; try again"}, 503,
                                headers={"Retry-After": RETRY_AFTER})
        state["pending"] += 1
        took: list[float] = []
        try:
            with anyio.fail_after(BODY_SECONDS):
                kind, payload = await _read_body(request)
            result = await _while_connected(request, lambda gone: anyio.to_thread.run_sync(
                timed, job, kind, payload, gone.is_set, took, limiter=limiter))
        except ImageError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        except TimeoutError:
            return JSONResponse({"error": f"request body not received within {BODY_SECONDS:g} s"},
                                408, headers={"Connection": "close"})
        except (ClientDisconnect, Cancelled):
            return Response(status_code=400)  # the client is gone; nothing to log
        except BodyTooLarge:
            raise  # the BodyLimit middleware answers 413
        except Exception as exc:  # noqa: BLE001 - whatever it is, no traceback per request
            return failed(request, exc)
        finally:
            state["pending"] -= 1
            load.release(name, cost, took[0] if took else None)
        # strict JSON: a number that is not one becomes null instead of failing the answer
        return Response(dumps(result, indent=None), media_type="application/json")

    routes = [Route(path, page) for path in pages]
    routes += [Route("/api/models", models), Route("/api/predict", predict, methods=["POST"]),
               Route("/api/explain", inside, methods=["POST"])]
    return Starlette(routes=routes, middleware=[
        Middleware(BodyLimit),
        Middleware(TrustedHostMiddleware, allowed_hosts=hosts)])


def check_port(host: str, port: int) -> None:
    """Raise UsageError (exit 2) when ``host:port`` cannot be listened on, before announcing it."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            hint = f"; try --port {port + 1}" if exc.errno == errno.EADDRINUSE else ""
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") \
                from None


def serve(runs: list[str | Path] | None = None, runs_dir: str | Path = "runs",
          host: str = "127.0.0.1", port: int = 8000) -> None:
    """Load runs and serve the page until Ctrl-C."""
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        raise SeqmnistError("the web page needs its extra: pip install 'seqmnist[web]'") from None
    loaded = resolve_runs(runs, runs_dir)
    check_port(host, port)
    hosts = LOOPBACK + ([host] if host not in LOOPBACK else [])
    if host in ("0.0.0.0", "::"):
        print("warning: listening on every interface; the page is reachable from your network")
        hosts = ["*"]
    for run in loaded:
        acc = run.metrics.get("test_accuracy")
        print(f"  {run.config.model:<5} {run.path}" + (f"  (test accuracy {acc:.2%})" if acc else ""))
    print(f"Open http://{'localhost' if host in LOOPBACK else host}:{port}/ (Ctrl-C to stop)")
    server(create_app(loaded, hosts), host, port).run()


def server(app, host: str = "127.0.0.1", port: int = 8000):
    """A uvicorn server for ``app`` with seqmnist's limits: at most CONNECTIONS connections
    (more get 503 at once), headers within HEADER_SECONDS of connecting or of the previous
    response, idle keep-alive connections closed after 5 s. Slow or silent clients cannot pile
    up; ``run()`` serves until Ctrl-C."""
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        """Closes a connection whose request headers have not all arrived in time (slowloris)."""

        def _arm(self) -> None:
            self.loop.call_later(HEADER_SECONDS, self._check_headers)

        def _check_headers(self) -> None:
            if (self.cycle is None or self.cycle.response_complete) \
                    and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", http=HeaderDeadline,
                            limit_concurrency=CONNECTIONS, timeout_keep_alive=5)
    return uvicorn.Server(config)
