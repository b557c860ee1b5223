"""Sweeps on a Ray cluster (extra ``seqmnist[ray]``): ``seqmnist sweep SPEC.toml --ray ADDRESS``.

Each run of the grid is one Ray task declaring its resources (``cpus_per_run`` CPUs, the run's
PyTorch threads; ``gpus_per_run`` of a GPU, default a quarter where the cluster has GPUs, so
four small models share a card). Tasks are spread over the nodes. Every task writes its run
straight into the sweep's folder, which must be a path every node reaches (a shared file system
mounted at the same place, or one machine): the driver writes a token there first and each task
checks it sees that token, so a node that cannot reach the folder fails with that sentence
instead of training into a folder nobody reads. A task whose worker or node dies is retried by
Ray on another node and resumes the run from its own checkpoint (``sweep.run_one``); the run's
provenance records the node that started it (``ray_node_id``) and the node of every resume.

``--ray auto`` starts a local Ray on this machine, listening on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path

from .._version import __version__
from ..core.errors import SeqmnistError, UsageError
from ..core.fileio import atomic_write
from ..models.plugins import LOADED, PluginError, load_plugin
from .sweep import Finished, GridRun, Runner, run_one

TOKEN = ".sweep-token"
RETRIES = 3  # Ray's retries of a task whose worker or node died (each resumes from a checkpoint)


class ClusterError(SeqmnistError):
    """The Ray cluster cannot run the sweep (unreachable, a node that cannot see the folder)."""


def _import_ray(loopback: bool):
    # Ray resolves 127.0.0.1 to the machine's network address when it looks for the local node
    # (ray-project/ray#59110), so a driver cannot reach a cluster that listens on loopback only.
    # This setting (read when Ray is imported) makes it keep the loopback address.
    if loopback:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise SeqmnistError("--ray needs its extra: pip install 'seqmnist[ray]' (on every node "
                            "of the cluster)") from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> str:
    """Ray retries an address where nothing listens for minutes; ask once, briefly, first.
    Returns the host."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise UsageError(f"--ray takes HOST:PORT (the head's `ray start --head --port`) or auto, "
                         f"got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ClusterError(f"nothing answers at {address} ({exc.strerror or exc}): is the head "
                           "node running (`ray start --head`), and is that its address?") from None
    return host


def connect(address: str):
    """Connect to the cluster at ``address`` ("auto": start a local Ray here). Returns ``ray``."""
    if not address or not isinstance(address, str):
        raise UsageError("--ray takes a cluster address (HOST:PORT) or auto")
    loopback = True  # auto: a local Ray, on 127.0.0.1
    if address != "auto":
        host = _check_reachable(address)
        loopback = host in ("localhost", "::1") or host.startswith("127.")
    ray = _import_ray(loopback)
    if ray.is_initialized():
        return ray
    kwargs = dict(log_to_driver=False, configure_logging=False)
    try:
        if address == "auto":
            ray.init(address="local", include_dashboard=False, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"cannot connect to the Ray cluster at {address}: "
                           f"{str(exc).splitlines()[0]}") from None
    return ray


def check_shared(out: Path, token: str, node: str) -> None:
    """Refuse to train on a node that does not see the sweep's folder as the driver wrote it."""
    try:
        seen = (out / TOKEN).read_text().strip()
    except OSError:
        seen = None
    if seen != token:
        raise ClusterError(f"node {node} cannot see the sweep's folder {out} as the driver wrote "
                           "it: --out must be a path every node of the cluster reaches (a shared "
                           "file system mounted at the same place)")


def load_shipped(plugins: tuple, node: str) -> None:
    """Load a sweep's plug-ins in a worker, before its run: a file from the path the driver
    read it at when this node sees the same file, else from the source shipped with the task;
    a module as installed on this node (a clear error naming the node where it is not)."""
    import hashlib
    import tempfile


    for spec, kind, sha256, source in plugins:
        if spec in LOADED or any(r.get("sha256") == sha256 and sha256 for r in LOADED.values()):
            continue
        try:
            if kind == "module":
                load_plugin(spec)
                continue
            path = Path(spec)
            if not (path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256):
                path = Path(tempfile.mkdtemp(prefix="seqmnist-plugin-")) / path.name
                path.write_text(source)  # the driver's copy, as it was when the sweep began
            record = load_plugin(str(path))
            record["plugin"] = spec  # provenance names the file the user gave
        except PluginError as exc:
            raise ClusterError(f"node {node} cannot load the plug-in {spec}: {exc} (install it "
                               "on every node of the cluster)") from None


def _task(grid_run: GridRun, out: str, data_dir: str | None, token: str,
          version: str) -> tuple[str, str, str, float]:
    """One run of the grid, inside a Ray worker: (what was done, run folder, node, seconds)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    if version != __version__:
        raise ClusterError(f"node {node} has seqmnist {__version__}, the driver {version}: install "
                           "the same version on every node")
    check_shared(Path(out), token, node)
    load_shipped(grid_run.plugins, node)
    start = time.perf_counter()
    what, path = run_one(grid_run, Path(out), data_dir, facts=dict(ray_node_id=node))
    return what, str(path), node, time.perf_counter() - start


def ray_runner(address: str, cpus_per_run: int = 1, gpus_per_run: float | None = None) -> Runner:
    """A sweep runner (``sweep.sweep(runner=...)``) that runs each grid run as a Ray task on the
    cluster at ``address``."""
    from dataclasses import replace

    if cpus_per_run < 1:
        raise UsageError(f"--cpus-per-run must be at least 1, got {cpus_per_run}")
    if gpus_per_run is not None and not 0 <= gpus_per_run <= 1:
        raise UsageError(f"--gpus-per-run must be between 0 and 1, got {gpus_per_run}")

    def run(runs: list[GridRun], out: Path, data_dir, finished: Finished) -> None:
        ray = connect(address)
        gpus = gpus_per_run
        if gpus is None:
            gpus = 0.25 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        out = Path(out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(8)
        atomic_write(out / TOKEN, token + "\n")
        remote = ray.remote(_task).options(
            num_cpus=cpus_per_run, num_gpus=gpus, max_retries=RETRIES, retry_exceptions=False,
            scheduling_strategy="SPREAD", name="seqmnist-run")
        data = None if data_dir is None else str(Path(data_dir).resolve())
        pending = {remote.remote(replace(r, config=replace(r.config, threads=cpus_per_run)),
                                 str(out), data, token, __version__): r for r in runs}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                grid_run = pending.pop(ready[0])
                try:
                    what, path, node, seconds = ray.get(ready[0])
                except ray.exceptions.RayTaskError as exc:  # the run's own error, as it was
                    if isinstance(exc.cause, SeqmnistError):
                        raise exc.cause from None
                    raise ClusterError(f"{grid_run.key} failed: {type(exc.cause).__name__}: "
                                       f"{exc.cause}") from None
                except ray.exceptions.RayError as exc:
                    raise ClusterError(f"{grid_run.key} failed on the cluster after {RETRIES} "
                                       f"retries: {str(exc).splitlines()[0]}") from None
                finished(grid_run, what, Path(path), f"{seconds:.1f} s on node {node[:8]}")
        finally:
            for ref in pending:  # a failed run stops the sweep; a rerun resumes the others
                ray.cancel(ref, force=True)

    return run
