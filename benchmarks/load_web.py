"""Load check of the web API: N concurrent connections POSTing a digit PNG to /api/predict on
127.0.0.1 for a fixed time; requests per second, p50/p99 latency, errors. With --hostile H, a
second phase runs the same honest load beside H hostile clients (a small PNG declaring 16
megapixels, 3 MB bodies, JSON pixels holding an integer over 1.8e308, and slowloris connections
dribbling their headers), and reports the
honest clients' numbers in both phases, so the two can be compared.

    python benchmarks/load_web.py RUN [RUN ...] --connections 16 --seconds 30 [--hostile 8]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def digit_png() -> bytes:
    canvas = Image.new("L", (280, 280), 255)
    ink = np.asarray(canvas).copy()
    ink[50:70, 60:220] = 0  # the bar of a 7
    for y in range(70, 250):
        x = int(200 - (y - 70) * 0.5)
        ink[y, x - 10:x + 10] = 0
    buf = io.BytesIO()
    Image.fromarray(ink).save(buf, "PNG")
    return buf.getvalue()


async def worker(client: httpx.AsyncClient, body: bytes, stop: float, latencies: list, errors: list):
    while time.perf_counter() < stop:
        t = time.perf_counter()
        try:
            resp = await client.post("/api/predict", content=body,
                                     headers={"Content-Type": "image/png"})
            if resp.status_code != 200:
                errors.append(resp.status_code)
                continue
        except httpx.HTTPError as exc:
            errors.append(type(exc).__name__)
            continue
        latencies.append(time.perf_counter() - t)


def bomb_png() -> bytes:
    """A few kilobytes declaring 4000 x 4000 pixels."""
    buf = io.BytesIO()
    Image.new("L", (4000, 4000), 255).save(buf, "PNG")
    return buf.getvalue()


async def hostile(url: str, kind: str, stop: float, counts: dict) -> None:
    """One hostile client until ``stop``; counts what the server answered."""
    host, port = url.removeprefix("http://").split(":")
    bodies = {"bomb": bomb_png(), "oversized": b"\0" * (3 * 1024 * 1024),
              "huge integer": b'{"pixels": [[' + b"9" * 400 + b"]]}"}
    types = {"huge integer": "application/json"}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while time.perf_counter() < stop:
            try:
                if kind == "slowloris":  # dribble a header byte every half second
                    reader, writer = await asyncio.open_connection(host, int(port))
                    header = b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    for byte in header * 20:
                        if time.perf_counter() > stop or reader.at_eof():
                            break
                        writer.write(bytes([byte]))
                        await writer.drain()
                        await asyncio.sleep(0.5)
                    writer.close()
                    counts[kind + " cut off"] = counts.get(kind + " cut off", 0) + 1
                    continue
                resp = await client.post("/api/predict", content=bodies[kind],
                                         headers={"Content-Type": types.get(kind, "image/png")})
                key = f"{kind} {resp.status_code}"
            except (httpx.HTTPError, OSError) as exc:
                key = f"{kind} {type(exc).__name__}"
            counts[key] = counts.get(key, 0) + 1


async def load(url: str, connections: int, seconds: float, hostile_clients: int = 0) -> dict:
    body = digit_png()
    latencies: list[float] = []
    errors: list = []
    counts: dict = {}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        start = time.perf_counter()
        kinds = ["bomb", "oversized", "slowloris", "huge integer"]
        await asyncio.gather(*(worker(client, body, start + seconds, latencies, errors)
                               for _ in range(connections)),
                             *(hostile(url, kinds[i % len(kinds)], start + seconds, counts)
                               for i in range(hostile_clients)))
        wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return dict(connections=connections, seconds=round(wall, 2), requests=len(latencies),
                requests_per_second=round(len(latencies) / wall, 1),
                p50_ms=round(q[49] * 1000, 1), p99_ms=round(q[98] * 1000, 1), errors=len(errors),
                error_kinds={str(k): errors.count(k) for k in set(errors)},
                hostile_clients=hostile_clients, hostile_answers=counts)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--hostile", type=int, default=0, help="hostile clients in a second phase")
    p.add_argument("--server-log", help="file for the server's stderr (its log lines)")
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = Path(args.server_log) if args.server_log else None
    server = subprocess.Popen([sys.executable, "-m", "seqmnist", "serve", *map(str, args.runs),
                               "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=log.open("wb") if log else None)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):  # wait for the server, at most 30 s
            try:
                httpx.get(url + "/api/models", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        result = {"honest": asyncio.run(load(url, args.connections, args.seconds))}
        if args.hostile:
            result["honest beside hostile"] = asyncio.run(
                load(url, args.connections, args.seconds, args.hostile))
    finally:
        server.terminate()
        server.wait(10)
    if log:
        result["server log lines"] = len(log.read_text(errors="replace").splitlines())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
