"""A Ray cluster of several nodes on this machine, on a loopback address: to try a device farm
(nodes offering ``target:<name>``) before there is one, and what the tests and tools/bench_search.py
run. Each node is a ``ray start --block`` in its own process group, stopped by its id (``ray stop``
would stop every Ray process of the machine). Token authentication is on, with a fresh token that
this process (the driver) shares through ``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN``.
"""

from __future__ import annotations

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
from typing import Any

# Ray rewrites 127.0.0.1 to the machine's network address; 127.0.0.2 is loopback and kept as given.
LOOPBACK = "127.0.0.2"


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalCluster:
    def __init__(self, head_cpus: int = 1, head_resources: dict[str, float] | None = None):
        self.head_cpus = head_cpus
        self.head_resources = head_resources or {}
        self.nodes: list[subprocess.Popen] = []
        self.port = free_port()
        self.address = f"{LOOPBACK}:{self.port}"
        self.temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: socket paths must fit 107 bytes
        self.saved_env = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
        package_root = str(Path(__file__).resolve().parents[2])
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "RAY_USAGE_STATS_ENABLED": "0",
                    "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}

    def __enter__(self) -> "LocalCluster":
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.env["RAY_AUTH_TOKEN"])
        _forget_token()  # this process may hold the default token of an earlier in-process Ray
        try:
            self._start("--head", "--port", str(self.port), "--include-dashboard", "false", "--temp-dir", self.temp,
                        "--ray-client-server-port", str(free_port()), num_cpus=self.head_cpus,
                        resources=self.head_resources)
            self.wait(1)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def add_node(self, num_cpus: int = 1, resources: dict[str, float] | None = None) -> str:
        """Start a worker node; returns its Ray node id once it has joined."""
        before = set(self.node_ids())
        self._start("--address", self.address, num_cpus=num_cpus, resources=resources or {})
        self.wait(len(before) + 1)
        return next(n for n in self.node_ids() if n not in before)

    def _start(self, *args: str, num_cpus: int, resources: dict[str, float]) -> None:
        ray_cli = str(Path(sys.executable).with_name("ray"))
        log = open(Path(self.temp) / f"node{len(self.nodes)}.log", "w")
        command = [ray_cli, "start", *args, "--node-ip-address", LOOPBACK, "--num-cpus", str(num_cpus),
                   "--object-store-memory", str(100 * 1024 * 1024), "--disable-usage-stats", "--block"]
        if resources:
            command += ["--resources", json.dumps(resources)]
        self.nodes.append(subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def node_ids(self) -> list[str]:
        return [n["NodeID"] for n in self._nodes()]

    def node_with(self, resource: str) -> list[str]:
        return [n["NodeID"] for n in self._nodes() if n["Resources"].get(resource)]

    def _nodes(self) -> list[dict[str, Any]]:
        import ray

        ray.init(address=self.address, _node_ip_address=LOOPBACK, logging_level="ERROR", log_to_driver=False)
        try:
            return [n for n in ray.nodes() if n["Alive"]]
        finally:
            ray.shutdown()

    def wait(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(n.poll() is not None for n in self.nodes):
                raise RuntimeError(f"a ray start process exited; see {self.temp}/node*.log")
            try:
                if len(self.node_ids()) >= count:
                    return
            except (ConnectionError, RuntimeError):
                pass
            time.sleep(1)
        raise RuntimeError(f"the Ray cluster at {self.address} did not reach {count} node(s) in {timeout:.0f} s")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            _signal_group(node, signal.SIGTERM)
        deadline = time.monotonic() + 3
        for node in self.nodes:
            try:
                node.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(node, signal.SIGKILL)
                node.wait(10)
        self.nodes = []
        shutil.rmtree(self.temp, ignore_errors=True)
        for key, value in self.saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _forget_token()


def _signal_group(node: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(node.pid, signum)  # the group of this node's own `ray start`, by its id
    except ProcessLookupError:
        pass


def _forget_token() -> None:
    try:
        from ray._raylet import AuthenticationTokenLoader
    except ImportError:
        return
    AuthenticationTokenLoader.instance().reset_cache()
