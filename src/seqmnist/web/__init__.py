"""The draw-a-digit page: ``seqmnist serve`` (extra ``seqmnist[web]``: Starlette on uvicorn).

    GET  /              the page (plain HTML, CSS and JavaScript shipped in the package)
    GET  /api/models    the loaded models
    POST /api/predict   an image (raw image/png or image/jpeg body, or multipart field "image"),
                        or JSON {"pixels": 28 x 28 numbers 0-255, white ink on black}

Safe by default: binds 127.0.0.1, bodies over 2 MB get 413 before being read whole, the Host header
must name this server (against DNS rebinding), cross-origin POSTs are refused, and no endpoint reads
a path the client chose.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import ImageError, SeqmnistError
from ..images import decode_image, predict_arrays, prepare_array
from ..storage import Run, latest_runs, load_run

MAX_BODY = 2 * 1024 * 1024
LOOPBACK = ["127.0.0.1", "localhost", "::1", "[::1]"]
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 for a declared or streamed body over ``limit`` bytes."""

    def __init__(self, app, limit: int = MAX_BODY):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.responses import JSONResponse

        too_large = JSONResponse({"error": f"request body over {self.limit:,} bytes"}, 413)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
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
                await too_large(scope, receive, send)


def resolve_runs(runs: list[str | Path] | None, runs_dir: str | Path = "runs") -> list[Run]:
    """The runs to serve: those given, else the latest finished run of each model."""
    paths = [Path(r) for r in runs] if runs else list(latest_runs(runs_dir).values())
    if not paths:
        raise SeqmnistError(f"no finished runs found under {runs_dir}/; make some with:\n"
                            "  seqmnist compare --epochs 1\nthen run `seqmnist serve` again")
    return [load_run(p) for p in paths]


def model_info(run: Run) -> dict:
    return dict(name=run.name, model=run.config.model, dataset=run.config.dataset,
                view=run.config.view, test_accuracy=run.metrics.get("test_accuracy"),
                classes=run.metrics.get("classes"), recurrent=hasattr(run.model, "forward_steps"))


def predict_all(runs: list[Run], image: np.ndarray) -> dict:
    """Every model's probabilities for one prepared uint8 image; per-row beliefs for row readers."""
    results = []
    for run in runs:
        shape = tuple(run.metrics.get("image_shape") or (28, 28))
        img = image if image.shape == shape else prepare_array(image / 255.0, shape)
        (pred,) = predict_arrays(run, img[None], steps=run.config.view == "rows")
        results.append({**model_info(run), **pred})
    return {"image": image.tolist(), "models": results}


async def _read_image(request) -> np.ndarray:
    """The request's image as a prepared 28 x 28 uint8 array; raises ImageError."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            pixels = np.asarray(json.loads(await request.body())["pixels"], dtype=np.float64)
        except (ValueError, KeyError, TypeError) as exc:
            raise ImageError(f'JSON body must be {{"pixels": [[...28 x 28 numbers...]]}} ({exc})'
                             ) from None
        if pixels.shape != (28, 28) or not np.isfinite(pixels).all() \
                or pixels.min() < 0 or pixels.max() > 255:
            raise ImageError(f"pixels must be 28 x 28 numbers in 0-255, got shape {pixels.shape}")
        return np.rint(pixels).astype(np.uint8)
    if ctype == "multipart/form-data":
        async with request.form(max_files=1, max_fields=4) as form:
            upload = form.get("image") or form.get("file")
            if upload is None or isinstance(upload, str):
                raise ImageError('multipart upload needs a file field named "image"')
            data = await upload.read()
    elif ctype.startswith("image/"):
        data = await request.body()
    else:
        raise ImageError("send image/png, image/jpeg, multipart/form-data or application/json")
    return prepare_array(decode_image(data, "upload"))


def create_app(runs: list[Run], allowed_hosts: list[str] | None = None):
    """The Starlette application serving ``runs``."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
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

    async def predict(request):
        origin = request.headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host") \
                or request.headers.get("sec-fetch-site") == "cross-site":
            return JSONResponse({"error": "cross-origin requests are refused"}, 403)
        try:
            image = await _read_image(request)
        except ImageError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse(predict_all(runs, image))

    routes = [Route(path, page) for path in pages]
    routes += [Route("/api/models", models), Route("/api/predict", predict, methods=["POST"])]
    return Starlette(routes=routes, middleware=[
        Middleware(BodyLimit),
        Middleware(TrustedHostMiddleware, allowed_hosts=hosts)])


def serve(runs: list[str | Path] | None = None, runs_dir: str | Path = "runs",
          host: str = "127.0.0.1", port: int = 8000) -> None:
    """Load runs and serve the page until Ctrl-C."""
    try:
        import uvicorn
    except ImportError:
        raise SeqmnistError("the web page needs its extra: pip install 'seqmnist[web]'") from None
    loaded = resolve_runs(runs, runs_dir)
    hosts = LOOPBACK + ([host] if host not in LOOPBACK else [])
    if host in ("0.0.0.0", "::"):
        print("warning: listening on every interface; the page is reachable from your network")
        hosts = ["*"]
    for run in loaded:
        acc = run.metrics.get("test_accuracy")
        print(f"  {run.config.model:<5} {run.path}" + (f"  (test accuracy {acc:.2%})" if acc else ""))
    print(f"Open http://{'localhost' if host in LOOPBACK else host}:{port}/ (Ctrl-C to stop)")
    uvicorn.run(create_app(loaded, hosts), host=host, port=port, log_level="warning")
