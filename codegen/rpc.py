"""Tuning and measuring on other machines through TVM's RPC tracker.

A device farm is a tracker (``python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190``)
and servers that register with it under a key naming the kind of device
(``python -m tvm.exec.rpc_server --tracker HOST:9190 --key KEY``). effc asks the tracker
for a device of a key for each measurement:

- ``effc compile --tune=N --rpc HOST:PORT --device-key KEY``: MetaSchedule builds the
  candidates here (``tune.WarmBuilder``) and measures them on the key's servers
  (``make_runner``: MetaSchedule's ``RPCRunner``, one worker per free server, so several
  servers measure at once); effc's default schedule is measured there too (``seed_record``).
- ``effc bench --rpc HOST:PORT --device-key KEY``: effc's build is exported as a shared
  library, uploaded to one server, loaded into a Relax VM there and timed with the VM's
  ``time_evaluator`` (``run_remote``); the outputs come back to be checked here.

The device must be the target effc compiles for (``--target``): the libraries are built
here for it and run there as they are.

    device = connect("127.0.0.1:9190", "x86-box")   # InputError when unreachable or no server
    runner = make_runner(device)
"""
from __future__ import annotations

import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import tvm
from tvm import rpc
from tvm.s_tir import meta_schedule as ms

from effc.ir.errors import InputError

CONNECT_TIMEOUT_S = 5.0
"""How long to wait for the tracker's TCP connection before saying it cannot be reached
(TVM's own ``connect_tracker`` retries for 60 s)."""
SESSION_TIMEOUT_S = 60
"""A server ends a session (one candidate's upload and measurement, or one bench) after this."""


@dataclass(frozen=True)
class RpcDevice:
    """The devices registered with a tracker under ``key``: ``servers`` of them, ``free`` idle."""

    host: str
    port: int
    key: str
    servers: int
    free: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def label(self) -> str:
        """How results measured there are labelled (``effc (rpc KEY)``)."""
        return f"rpc {self.key}"

    def session(self, timeout_s: float = SESSION_TIMEOUT_S) -> rpc.RPCSession:
        """A session on one of the key's servers (waits for one to be free)."""
        try:
            return rpc.connect_tracker(self.host, self.port).request(self.key, session_timeout=timeout_s,
                                                                      max_retry=2)
        except (OSError, RuntimeError) as e:  # TVM's RPC errors are RuntimeErrors
            raise InputError(f"could not open a session on a device under key '{self.key}' at {self.address}: "
                             f"{_last_line(e)}") from None


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9190`` for IPv6) → (host, port); InputError otherwise."""
    host, sep, port = (text or "").strip().rpartition(":")
    host = host.strip("[]")
    try:
        if not sep or not host:
            raise ValueError
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError
    except ValueError:
        raise InputError(f"--rpc '{text}': expected the tracker as HOST:PORT (e.g. 127.0.0.1:9190)") from None
    return host, number


def tracker_summary(host: str, port: int) -> dict[str, Any]:
    """The tracker's ``summary()`` (``queue_info`` per key, ``server_info`` per server);
    InputError when nothing answers at host:port or what answers is not a tracker."""
    where = f"{host}:{port}"
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise InputError(f"cannot reach an RPC tracker at {where} ({e.strerror or e}); start one with "
                         f"`python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port {port}` or check --rpc") from None
    try:
        tracker = rpc.connect_tracker(host, port)
        try:
            return tracker.summary()
        finally:
            tracker.close()
    except (OSError, RuntimeError, ValueError) as e:
        raise InputError(f"{where} did not answer as a TVM RPC tracker ({_last_line(e)}); check --rpc") from None


def count_servers(summary: Mapping[str, Any], key: str) -> tuple[int, int]:
    """(servers registered under ``key``, how many of them are free) in a tracker summary."""
    total = sum(1 for s in summary.get("server_info", []) if s.get("key") == f"server:{key}")
    free = int(summary.get("queue_info", {}).get(key, {}).get("free", 0))
    return max(total, free), free


def connect(address: str | None, key: str | None) -> RpcDevice:
    """The devices under ``key`` at the tracker ``address`` (HOST:PORT); InputError when
    either is missing, the tracker cannot be reached or has no server for the key."""
    if not address:
        raise InputError("--device-key needs --rpc HOST:PORT, the TVM RPC tracker the device registered with")
    if not key:
        raise InputError("--rpc needs --device-key KEY, the key the device's rpc_server registered with")
    host, port = parse_address(address)
    servers, free = count_servers(tracker_summary(host, port), key)
    if servers == 0:
        raise InputError(f"no device registered under key '{key}' at {host}:{port}; start one with "
                         f"`python -m tvm.exec.rpc_server --tracker {host}:{port} --key {key}`")
    return RpcDevice(host, port, key, servers, free)


def make_runner(device: RpcDevice, timeout_s: float = SESSION_TIMEOUT_S) -> ms.runner.RPCRunner:
    """MetaSchedule's RPC runner on ``device``'s servers: one worker per free server (at
    least one), so several servers measure candidates at once."""
    config = ms.runner.RPCConfig(tracker_host=device.host, tracker_port=device.port, tracker_key=device.key,
                                 session_timeout_sec=int(timeout_s))
    return ms.runner.RPCRunner(config, max_workers=max(1, device.free or device.servers))


@dataclass
class RemoteRun:
    """One library run on a device: every value ``main`` returns, and its timing."""

    outputs: list[np.ndarray]
    ms: float
    """Median of the timed runs, milliseconds."""
    reps: int


def run_remote(executable: Any, feeds: Mapping[str, np.ndarray], order: Sequence[str], device: RpcDevice, *,
               reps: int = 50, max_seconds: float = 15.0) -> RemoteRun:
    """Export ``executable`` (a Relax VM executable) as a shared library, upload it to one of
    ``device``'s servers, load it into a Relax VM there, run ``main`` on ``feeds`` (in
    ``order``) and fetch its outputs, then time it with the VM's ``time_evaluator``: up to
    ``reps`` runs, fewer when they would take over ``max_seconds`` (at least one)."""
    sess = device.session(timeout_s=max(SESSION_TIMEOUT_S, 4 * max_seconds))
    with tempfile.TemporaryDirectory(prefix="effc-rpc-") as d:
        path = Path(d) / "model.so"
        executable.export_library(str(path))
        sess.upload(str(path))
    lib = sess.load_module("model.so")
    dev = sess.cpu(0)
    vm = tvm.runtime.vm.VirtualMachine(lib, dev)
    args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[n]), dev) for n in order]
    vm.set_input("main", *args)  # the stateful API: main may return a tuple, which RPC cannot time
    vm.invoke_stateful("main")
    outputs = _numpy(vm.get_outputs("main"))
    once = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=1)("main").mean
    n = max(1, min(reps, int(max_seconds / max(once, 1e-9))))
    result = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=n)("main")
    return RemoteRun(outputs, 1e3 * float(np.median([float(x) for x in result.results])), n)


def _numpy(value: Any) -> list[np.ndarray]:
    if isinstance(value, (tuple, list)):
        return [a for v in value for a in _numpy(v)]
    return [value.numpy()]


def _last_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[-1][:200] if lines else ''}"
