"""Tuning and measuring over TVM RPC (effc.codegen.rpc; issue 11, item 6).

A tracker and two servers run on loopback for the module (subprocesses on free ports,
ended by the fixture's finalizer). ``effc compile --tune --rpc`` must measure every trial
and effc's seed schedules on those servers, with one runner worker per free server, and the
tuned build must match onnxruntime; ``effc bench --rpc`` runs and times effc's build on a
server and checks its outputs; an unreachable tracker, an unknown key and half the flags
are effc's errors (exit 2, no traceback)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import effc
from effc.cli import main
from effc.ir.errors import InputError
from tests.fixtures import REPO, assert_close, ort_run

KEY = "effc-test"
MODEL = REPO / "examples" / "digits_cnn.onnx"
TRIALS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Farm:
    """A tracker and two servers under ``KEY``, their logs in ``folder``."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.procs: list[subprocess.Popen] = []
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.logs = [folder / "server0.log", folder / "server1.log"]

    def _start(self, args: list[str], log: Path) -> None:
        env = {**os.environ, "TVM_NUM_THREADS": "1"}
        with open(log, "w") as out:
            self.procs.append(subprocess.Popen([sys.executable, "-m", *args], stdout=out, stderr=subprocess.STDOUT,
                                               env=env, start_new_session=True))

    def start(self) -> None:
        self._start(["tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(self.port),
                     "--port-end", str(self.port + 1)], self.folder / "tracker.log")
        for log in self.logs:
            port = _free_port()
            self._start(["tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port), "--port-end",
                         str(port + 1), "--tracker", self.address, "--key", KEY], log)
        from effc.codegen.rpc import connect

        deadline = time.monotonic() + 60
        while True:
            try:
                if connect(self.address, KEY).free == 2:
                    return
            except InputError:  # the tracker or a server is not up yet
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                logs = "\n".join(p.read_text()[-1500:] for p in self.folder.glob("*.log"))
                raise RuntimeError(f"the RPC tracker and servers did not come up:\n{logs}")
            time.sleep(0.5)

    def sessions(self) -> list[int]:
        """Sessions each server has served so far (its log says ``connected from`` for each)."""
        return [log.read_text().count("connected from") for log in self.logs]

    def stop(self) -> None:
        for p in self.procs:  # each in its own process group: the servers fork a process per session
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.fixture(scope="module")
def farm(tmp_path_factory, request):
    f = Farm(tmp_path_factory.mktemp("rpc"))
    request.addfinalizer(f.stop)
    f.start()
    return f


def _digits_inputs() -> dict[str, np.ndarray]:
    return {"x": np.load(REPO / "examples" / "digits_test.npz")["x"][:1]}


def test_tuning_measures_on_the_rpc_servers(farm, tmp_path, monkeypatch, capsys):
    from effc.codegen import rpc

    made = []
    real = rpc.ms.runner.RPCRunner

    def spy(*args, **kwargs):
        made.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(rpc.ms.runner, "RPCRunner", spy)
    before = farm.sessions()
    out = tmp_path / "out"
    assert main(["compile", str(MODEL), "--input-shape", "x=1,1,8,8", "--tune", str(TRIALS), "--tuning-db",
                 str(tmp_path / "db"), "--rpc", farm.address, "--device-key", KEY, "-o", str(out)]) == 0
    report = capsys.readouterr().out
    assert f"tuned with {TRIALS} trials" in report and f"measured on 2 device(s) under key '{KEY}'" in report, report
    # MetaSchedule's RPC runner on this tracker and key, one worker per free server
    assert len(made) == 1
    (config,), kwargs = made[0]
    assert (config.tracker_host, config.tracker_port, config.tracker_key) == ("127.0.0.1", farm.port, KEY)
    assert kwargs["max_workers"] == 2
    # every trial and every seed record (effc's schedule of each tuned kernel) was a session on a server,
    # and both servers served some
    served = [a - b for a, b in zip(farm.sessions(), before)]
    assert sum(served) >= TRIALS + 2 and min(served) >= 1, served
    # the tuned build (the database's records were measured remotely) matches onnxruntime
    feeds = _digits_inputs()
    got = effc.load(out).run(feeds)
    want = ort_run(MODEL, feeds)
    assert got.keys() == want.keys()
    for name in want:
        assert_close(got[name], want[name], name)


def test_bench_runs_and_times_effc_on_a_server(farm, monkeypatch):
    from effc.bench import bench_model, format_row

    for var in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):  # bench_model sets them for this process
        monkeypatch.setenv(var, os.environ.get(var, "1"))
    before = farm.sessions()
    row = bench_model(MODEL, threads=1, progress=False, warmup=1, reps=5, max_seconds=5, log=lambda line: None,
                      rpc=farm.address, device_key=KEY)
    assert sum(farm.sessions()) == sum(before) + 1  # one session: upload, load, run, time
    assert row["remote"] == f"{KEY} at {farm.address}"
    r = row["effc"]
    assert r["ms"] > 0 and 1 <= r["reps"] <= 5 and r["matches_ort"] is True, r
    assert r["note"] == f"rpc {KEY} at {farm.address}"
    assert row["ort"]["ms"] > 0 and row["ort"]["matches_ort"] is True  # onnxruntime: here
    text = format_row(row)
    assert any(line.startswith(f"effc (rpc {KEY})") and f"{r['ms']:.4f}" in line and line.endswith("yes")
               for line in text.splitlines()), text


def test_bench_remote_outputs_are_checked(farm, monkeypatch):
    """The outputs fetched from the server are what ``matches_ort`` judges: a server whose
    results are off makes the row say NO."""
    from effc.codegen import rpc

    real = rpc.run_remote

    def off(*args, **kwargs):
        result = real(*args, **kwargs)
        result.outputs = [o + 1.0 for o in result.outputs]
        return result

    monkeypatch.setattr(rpc, "run_remote", off)
    for var in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.setenv(var, os.environ.get(var, "1"))
    from effc.bench import bench_model

    row = bench_model(MODEL, threads=1, progress=False, warmup=1, reps=2, max_seconds=2, log=lambda line: None,
                      rpc=farm.address, device_key=KEY)
    assert row["effc"]["matches_ort"] is False


@pytest.mark.parametrize("command", ["compile", "bench"])
def test_unreachable_tracker_and_unknown_key_are_input_errors(farm, command, capsys):
    extra = ["--tune", "4"] if command == "compile" else []
    nobody = _free_port()
    assert main([command, str(MODEL), *extra, "--rpc", f"127.0.0.1:{nobody}", "--device-key", KEY]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"effc: error: cannot reach an RPC tracker at 127.0.0.1:{nobody} ") and "Traceback" not in err
    assert main([command, str(MODEL), *extra, "--rpc", farm.address, "--device-key", "nope"]) == 2
    assert capsys.readouterr().err == (
        f"effc: error: no device registered under key 'nope' at {farm.address}; start one with "
        f"`python -m tvm.exec.rpc_server --tracker {farm.address} --key nope`\n")


@pytest.mark.parametrize("args, message", [
    (["--tune", "4", "--device-key", KEY], "--device-key needs --rpc HOST:PORT"),
    (["--tune", "4", "--rpc", "127.0.0.1:9190"], "--rpc needs --device-key KEY"),
    (["--tune", "4", "--rpc", "localhost", "--device-key", KEY], "--rpc 'localhost': expected the tracker as HOST:PORT"),
    (["--rpc", "127.0.0.1:9190", "--device-key", KEY], "--rpc measures tuning trials on a device; give --tune N"),
])
def test_rpc_flag_mistakes_are_input_errors(args, message, capsys):
    assert main(["compile", str(MODEL), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("effc: error: ") and message in err, err


def test_explore_times_its_configurations_on_a_server(farm, tmp_path):
    """``effc explore --rpc``: each configuration is built here and timed on the device, one
    session per distinct graph, as many at once as servers are free; quality and size do
    not depend on where it runs."""
    from effc.codegen.rpc import connect
    from effc.explore import Config, explore
    from effc.models import load_model
    from tests import labelled

    d = labelled.digits(16)
    configs = [Config("float"), Config("int8-per-channel", "per-channel"), Config("substitute-latency",
                                                                                   substitute="latency")]
    before = farm.sessions()
    lines: list[str] = []
    pts = explore(load_model(MODEL), "x86", {"x": d.calib}, {"x": d.x[:40]}, tmp_path, labels=d.y[:40],
                  configs=configs, rpc=connect(farm.address, KEY), log=lines.append)
    # float and int8, one session each (the two servers free: both timing at once); the search
    # kept float's graph
    assert sum(farm.sessions()) == sum(before) + 2
    assert all(p.latency > 0 and p.latency_unit == "ms" for p in pts)
    assert pts[2].latency == pts[0].latency and "timed as float (the same kernels)" in pts[2].detail
    assert f"timing 3 configurations on rpc {KEY}, on up to 2 servers at once" in lines
    with pytest.raises(InputError, match="cortex-m4 programs are measured under qemu here"):
        explore(load_model(MODEL), "cortex-m4", {"x": d.calib}, {"x": d.x[:40]}, tmp_path / "m4", labels=d.y[:40],
                configs=configs[:1], rpc=connect(farm.address, KEY))
