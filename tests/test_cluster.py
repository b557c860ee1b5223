"""Sweeps on a real Ray cluster on this machine: a head node and a second node, each started with
``ray start`` on 127.0.0.1 (two raylets, one CPU each), started once for the module. The sweep
must land runs on both nodes, survive the second node's raylet being killed mid-run (its run is
retried on the head and resumed from its checkpoint, none duplicated), write the same reports as
on one machine, and skip everything when run again."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from seqmnist.cli import main
from seqmnist.core.errors import SeqmnistError
from seqmnist.experiments.cluster import ClusterError, check_shared, connect

RAY = str(Path(sys.executable).parent / "ray")
EPOCHS = 10
SPEC = f"""
models = ["lstm"]
datasets = ["mnist"]
seeds = [0, 1, 2, 3]
[recipe]
epochs = {EPOCHS}
limit = 1000
"""
# Every process of the test (nodes, drivers) uses token authentication with the module's own
# token, whatever ~/.ray holds; workers run at normal priority so a busy machine cannot starve the
# test (Ray's default is nice 15). The nodes listen on 127.0.0.1 only.
BASE_ENV = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
                RAY_USAGE_STATS_ENABLED="0", RAY_worker_niceness="0")
BASE_ENV.pop("RAY_ADDRESS", None)
NODE_ENV = dict(BASE_ENV, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
# A dead node is noticed within about 3 s.
HEALTH = json.dumps(dict(health_check_period_ms=1000, health_check_failure_threshold=3))
# `ray start --address` turns 127.0.0.1 into the machine's network address for a worker node
# (ray-project/ray#59110) and refuses a worker node under the setting above; this keeps the second
# node on loopback like the head.
SECOND_NODE = """
import sys
import ray._private.services as services
services.resolve_ip_for_localhost = lambda host: host
from ray.scripts.scripts import main
sys.argv = ["ray", "start"] + sys.argv[1:]
main()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_ids(address: str) -> dict[int, str]:
    """{node manager port: node id} of the live nodes, asked from a separate driver."""
    code = (f"import json, ray; ray.init(address={address!r}, log_to_driver=False); print("
            "json.dumps({n['NodeManagerPort']: n['NodeID'] for n in ray.nodes() if n['Alive']}))")
    out = subprocess.run([sys.executable, "-c", code], env=NODE_ENV, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}


def raylet_pid(port: int) -> int:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args[0].endswith(b"/raylet") and f"--node_manager_port={port}".encode() in args:
            return int(cmdline.parent.name)
    raise AssertionError(f"no raylet on port {port}")


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a raylet's workers)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines()
                          if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def start(command: list[str], env: dict) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def own_processes(token: str) -> list[int]:
    """The processes this module started: every Ray process (nodes, their workers, drivers)
    inherits the module's own RAY_AUTH_TOKEN, which no other process on the machine holds."""
    mark = f"RAY_AUTH_TOKEN={token}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mark in environ.read_bytes().split(b"\0") and int(environ.parent.name) != os.getpid():
                found.append(int(environ.parent.name))
        except (OSError, ValueError):
            continue
    return found


def stop_own(token: str, grace: float = 10.0) -> None:
    """Stop this module's Ray nodes and nothing else (never `ray stop`, which stops every Ray
    process of the machine, a user's own cluster included): SIGTERM, then SIGKILL what is left."""
    signal_all(own_processes(token), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while own_processes(token) and time.monotonic() < deadline:
        time.sleep(0.2)
    signal_all(own_processes(token), signal.SIGKILL)


@pytest.fixture(scope="module")
def ray_temp():
    """The module's own folder for Ray's session folders (never /tmp/ray, a user's Ray's), short
    because it holds sockets; every process the module started is stopped before it goes."""
    temp = tempfile.mkdtemp(prefix="seqmnist-ray-")
    try:
        yield temp
    finally:
        stop_own(BASE_ENV["RAY_AUTH_TOKEN"])
        shutil.rmtree(temp, ignore_errors=True)  # made above, by this module


@pytest.fixture(scope="module")
def cluster(ray_temp):
    head_port, head_manager, second_manager = free_port(), free_port(), free_port()
    address = f"127.0.0.1:{head_port}"
    temp = ray_temp
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=80000000",
              f"--temp-dir={temp}"]
    try:
        start([RAY, "start", "--head", f"--port={head_port}", "--include-dashboard=false",
               "--disable-usage-stats", f"--node-manager-port={head_manager}",
               f"--system-config={HEALTH}", *common], NODE_ENV)
        start([sys.executable, "-c", SECOND_NODE, f"--address={address}",
               f"--node-manager-port={second_manager}", *common], BASE_ENV)
        ids = node_ids(address)
        assert set(ids) == {head_manager, second_manager}, ids
        yield dict(address=address, head=ids[head_manager], second=ids[second_manager],
                   second_port=second_manager)
    finally:
        stop_own(BASE_ENV["RAY_AUTH_TOKEN"])


def test_the_clusters_processes_are_found_by_their_own_token_only():
    """``stop_own`` stops what this module started and nothing else: a process holding another
    token (a user's Ray) is not among them, one holding the module's token is."""
    token = secrets.token_hex(16)  # not the cluster's: the module's nodes stay up
    # each child says it runs before it is looked for: its environment is its own from then on
    # (before its exec, /proc shows the parent's)
    child = [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"]
    other = subprocess.Popen(child, env=dict(BASE_ENV, RAY_AUTH_TOKEN=secrets.token_hex(16)),
                             stdout=subprocess.PIPE, text=True)
    ours = subprocess.Popen(child, env=dict(BASE_ENV, RAY_AUTH_TOKEN=token),
                            stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == ours.stdout.readline().strip() == "ready"
    try:
        found = own_processes(token)
        assert ours.pid in found and other.pid not in found
        stop_own(token, grace=5)
        assert ours.wait(10) is not None and other.poll() is None
    finally:
        other.kill()
        ours.kill()
        other.wait()
        ours.wait()


def provenance(run: Path) -> dict:
    return json.loads((run / "provenance.json").read_text())


def kill_node_mid_run(out: Path, node: str, port: int, sweep: subprocess.Popen) -> Path:
    """Kill the node (its raylet and every worker it started) while a run it started has saved a
    checkpoint and is not finished; returns that run. The workers are stopped (SIGSTOP) before
    the run is checked a last time, so the run that is killed cannot have finished: nothing but
    the retry on the head can finish it, whatever the speed of the machine."""
    deadline = time.monotonic() + 300
    raylet = raylet_pid(port)
    while time.monotonic() < deadline and sweep.poll() is None:
        for file in out.glob("runs/*/*/checkpoint.pt"):
            run = file.parent
            try:
                started_on = provenance(run).get("ray_node_id")
            except (OSError, ValueError):
                continue
            if started_on != node or (run / "model.safetensors").exists():
                continue
            workers = children(raylet)
            assert workers, "the node's raylet has no worker processes to stop"
            signal_all(workers, signal.SIGSTOP)
            if (run / "model.safetensors").exists():  # finished in the meantime: try another
                signal_all(workers, signal.SIGCONT)
                continue
            signal_all([raylet, *workers], signal.SIGKILL)
            return run
        time.sleep(0.1)
    raise AssertionError(f"no run in flight on {node}: {sweep.communicate()}")


def test_a_sweep_on_two_nodes_survives_a_dead_node_and_reruns_as_skips(cluster, tmp_path,
                                                                       small_mnist_dir):
    spec, out = tmp_path / "grid.toml", tmp_path / "sweep"
    spec.write_text(SPEC)
    command = [sys.executable, "-m", "seqmnist", "sweep", str(spec), "--out", str(out),
               "--data-dir", str(small_mnist_dir), "--ray", cluster["address"], "--no-progress"]
    env = BASE_ENV  # the driver as a user runs it: seqmnist itself handles a loopback cluster
    sweep = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        victim = kill_node_mid_run(out, cluster["second"], cluster["second_port"], sweep)
        stdout, stderr = sweep.communicate(timeout=600)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, stderr
    lines = [line for line in stdout.splitlines() if line.startswith(("trained", "resumed"))]
    assert len(lines) == 4, stdout  # one line per run, each run once

    runs = []
    for grid in sorted((out / "runs").iterdir()):  # runs/ holds the grid's slots only
        (run,) = grid.iterdir()  # none duplicated
        assert (run / "model.safetensors").is_file()
        history = json.loads((run / "history.json").read_text())
        assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
        runs.append(run)
    assert len(runs) == 4
    started = {provenance(r)["ray_node_id"] for r in runs}
    assert started == {cluster["head"], cluster["second"]}  # landed on both nodes
    (resume,) = provenance(victim)["resumed"]  # retried on the head, from its checkpoint
    assert resume["ray_node_id"] == cluster["head"] and resume["after_epoch"] >= 1
    assert f"resumed  {victim.parent.name}" in stdout

    table = json.loads((out / "sweep.json").read_text())
    assert [(r["model"], r["view"], r["dataset"], r["seeds"]) for r in table["rows"]] == [
        ("lstm", "rows", "mnist", [0, 1, 2, 3])]
    report = json.loads((out / "report-mnist" / "comparison.json").read_text())
    assert len(report["groups"][0]["runs"]) == 4 and (out / "report-mnist" / "report.html").is_file()

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert [line.split()[0] for line in again.stdout.splitlines()
            if line.split() and line.split()[0] in ("skipped", "trained", "resumed")] == \
        ["skipped"] * 4


def test_a_node_that_cannot_see_the_folder_refuses_to_train(tmp_path):
    (tmp_path / ".sweep-token").write_text("abc\n")
    check_shared(tmp_path, "abc", "node1")
    with pytest.raises(ClusterError, match="node node2 cannot see the sweep's folder"):
        check_shared(tmp_path, "xyz", "node2")
    with pytest.raises(ClusterError, match="must be a path every node"):
        check_shared(tmp_path / "elsewhere", "abc", "node3")


def test_ray_missing_or_misused_is_one_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)  # the default sweeps/<spec> folder lands here, not in the repo
    spec = tmp_path / "grid.toml"
    spec.write_text('models = ["rnn"]\ndatasets = ["digits"]\nseeds = [0]')
    assert main(["sweep", str(spec), "--cpus-per-run", "2"]) == 2
    assert "--cpus-per-run and --gpus-per-run go with --ray" in capsys.readouterr().err
    assert main(["sweep", str(spec), "--ray", "auto", "--gpus-per-run", "2"]) == 2
    assert "--gpus-per-run must be between 0 and 1" in capsys.readouterr().err
    assert main(["sweep", str(spec), "--ray", "127.0.0.1:" + str(free_port())]) == 1
    assert "nothing answers at 127.0.0.1:" in capsys.readouterr().err  # at once, not in minutes
    assert main(["sweep", str(spec), "--ray", "headnode"]) == 2
    assert "--ray takes HOST:PORT" in capsys.readouterr().err
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
        with pytest.raises(SeqmnistError, match=r"pip install 'seqmnist\[ray\]'"):
            connect(f"127.0.0.1:{listening.getsockname()[1]}")


def test_ray_auto_starts_a_local_ray_and_records_its_node(tmp_path, ray_temp):
    spec, out = tmp_path / "one.toml", tmp_path / "sweep"
    spec.write_text('models = ["rnn"]\ndatasets = ["digits"]\nseeds = [0]\n[recipe]\nepochs = 1')
    done = subprocess.run([sys.executable, "-m", "seqmnist", "sweep", str(spec), "--out", str(out),
                           "--ray", "auto", "--no-progress"],
                          env=dict(BASE_ENV, RAY_TMPDIR=ray_temp), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (run,) = (out / "runs" / "rnn-digits-rows-seed0").iterdir()
    node = provenance(run)["ray_node_id"]
    assert len(node) == 56 and f"on node {node[:8]}" in done.stdout


def test_a_plugin_model_runs_on_the_cluster_and_a_missing_one_names_the_node(cluster, tmp_path,
                                                                             small_mnist_dir):
    """The spec's plug-ins travel with each task: a file's source is shipped, a module must be
    installed on every node, and where it is not, the error names the node."""
    from test_plugins import GOOD, MODEL

    (tmp_path / "running_model.py").write_text(GOOD)
    spec, out = tmp_path / "grid.toml", tmp_path / "sweep"
    spec.write_text('plugins = ["running_model.py"]\nmodels = ["running"]\ndatasets = ["mnist"]\n'
                    'seeds = [0]\n[recipe]\nepochs = 1\nlimit = 200\n')
    command = [sys.executable, "-m", "seqmnist", "sweep", str(spec), "--out", str(out),
               "--data-dir", str(small_mnist_dir), "--ray", cluster["address"], "--no-progress"]
    done = subprocess.run(command, env=BASE_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (run,) = (out / "runs" / "running-mnist-rows-seed0").iterdir()
    facts = provenance(run)
    assert facts["plugin"]["plugin"] == str((tmp_path / "running_model.py").resolve())
    assert len(facts["ray_node_id"]) == 56
    # a module the driver imports and the nodes do not have
    mods = tmp_path / "driver-only"
    mods.mkdir()
    (mods / "driveronly_models.py").write_text(
        MODEL.format(name="driveronly", body="Running(input_shape, num_classes)"))
    spec.write_text('plugins = ["driveronly_models"]\nmodels = ["driveronly"]\n'
                    'datasets = ["mnist"]\nseeds = [0]\n[recipe]\nepochs = 1\nlimit = 200\n')
    env = dict(BASE_ENV, PYTHONPATH=str(mods) + os.pathsep + BASE_ENV.get("PYTHONPATH", ""))
    done = subprocess.run([*command[:6], str(tmp_path / "sweep2"), *command[7:]], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "cannot load the plug-in driveronly_models" in done.stderr, \
        done.stderr[-2000:]
    assert "node " in done.stderr and "Traceback" not in done.stderr
