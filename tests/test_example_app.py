"""examples/http_service.py: started in a subprocess on a free local port, asked for a prediction."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import socket
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edgetl.metadata import sidecar_path
from edgetl.runtime import EdgeModel
from test_decode import bomb_png

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 60  # seconds for the service to load the model and print its address


@pytest.fixture(scope="module")
def onnx_artifact(cnn_artifacts) -> Path:
    """The small CNN's FP32 ONNX artifact (conftest's session export; read-only)."""
    return cnn_artifacts.paths["onnx"]


@contextlib.contextmanager
def _serving(artifact: Path, *options: str):
    """The service in a subprocess on a free loopback port: yields (base url, process)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(REPO / "examples" / "http_service.py"), str(artifact),
                             "--host", "127.0.0.1", "--port", "0", "--threads", "1", *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # readline() blocks; a timer kills a service that never comes up so the test stays bounded.
    watchdog = threading.Timer(START_TIMEOUT, proc.kill)
    watchdog.start()
    try:
        line = proc.stdout.readline().strip()
    finally:
        watchdog.cancel()
    try:
        assert line.startswith("listening on http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        yield line.split("listening on ", 1)[1], proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


@pytest.fixture
def service(onnx_artifact):
    with _serving(onnx_artifact, "--top-k", "2") as (url, _):
        yield url


def _request(url: str, body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_http_service_classifies_posted_images(service, onnx_artifact, sample_dir):
    status, health = _request(f"{service}/health")
    assert status == 200 and health["status"] == "ok" and health["labels"] == ["ants", "bees"]

    model = EdgeModel.load(onnx_artifact)
    for image in (sorted((sample_dir / "ants").iterdir())[0], sorted((sample_dir / "bees").iterdir())[0]):
        status, answer = _request(f"{service}/predict", image.read_bytes())
        assert status == 200, answer
        expected = model.predict(image, top_k=2)
        assert [p["label"] for p in answer["predictions"]] == [label for label, _ in expected]
        assert abs(answer["predictions"][0]["score"] - expected[0][1]) < 1e-5

    status, answer = _request(f"{service}/predict?top_k=1", image.read_bytes())
    assert status == 200 and len(answer["predictions"]) == 1

    status, answer = _request(f"{service}/predict", b"definitely not an image")
    assert status == 400 and "cannot decode" in answer["error"]
    status, _ = _request(f"{service}/nothing-here")
    assert status == 404


# -- hostile load -----------------------------------------------------------------------------------
def _status(sock: socket.socket) -> int | None:
    """The status code of whatever the server answers on ``sock`` (None: closed without an answer)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    finally:
        sock.close()
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else None


def _raw(url: str, payload: bytes, shut: bool = False) -> socket.socket:
    host, port = url.rsplit("/", 1)[-1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=15)
    sock.sendall(payload)
    if shut:
        sock.shutdown(socket.SHUT_WR)
    return sock


def _proc_status(pid: int) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {"threads": int(fields["Threads"]), "hwm_mb": int(fields["VmHWM"].split()[0]) // 1024}


def _post(url: str, body: bytes) -> tuple[int, float]:
    """One HTTP/1.1 POST /predict on a fresh connection: (status, seconds to the whole answer)."""
    host, port = url.rsplit("/", 1)[-1].split(":")
    started = time.monotonic()
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("POST", "/predict", body)
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    finally:
        connection.close()


IDLE_TIMEOUT = 3.0


def test_http_service_idle_connections_cost_a_socket_not_a_worker(onnx_artifact, sample_dir):
    """500 idle or trickling connections (silent, half a header, half a body) and 20 real requests at
    once: every real request 200 in under 2 s, the idle ones closed at ``--timeout`` (408 where part of
    a request came), no thread per connection, bounded memory."""
    body = min((sample_dir / "bees").iterdir(), key=lambda p: p.stat().st_size).read_bytes()
    with _serving(onnx_artifact, "--workers", "4", "--timeout", str(IDLE_TIMEOUT)) as (url, proc):
        assert _request(f"{url}/health")[0] == 200
        baseline = _proc_status(proc.pid)
        partial = [b"", b"POST /predict HTTP/1.1\r\nHost: x\r\n",
                   b"POST /predict HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + bytes(1000)]
        first_opened = time.monotonic()
        idle = [_raw(url, partial[i % 3]) for i in range(500)]
        last_opened = time.monotonic()
        results: list[tuple[int, float]] = []
        clients = [threading.Thread(target=lambda: results.append(_post(url, body))) for _ in range(20)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(30)
        held = _proc_status(proc.pid)
        statuses = [_status(idle[0])]
        first_closed = time.monotonic()
        statuses += [_status(sock) for sock in idle[1:]]
        last_closed = time.monotonic()
        assert [status for status, _ in results] == [200] * 20, results
        slowest = max(seconds for _, seconds in results)
        print(f"500 idle opened in {last_opened - first_opened:.2f} s; slowest of 20 real requests: {slowest:.3f} s")
        assert slowest < 2.0, results
        assert statuses == [None, 408, 408] * 166 + [None, 408], statuses
        # Each idle socket is closed at the timeout after it was opened: not before, not much after.
        assert first_closed - first_opened > IDLE_TIMEOUT - 0.2, first_closed - first_opened
        assert last_closed - last_opened < IDLE_TIMEOUT + 2, last_closed - last_opened
        assert held["threads"] <= baseline["threads"] + 4, (baseline, held)
        assert held["hwm_mb"] < baseline["hwm_mb"] + 60, (baseline, held)
        assert _request(f"{url}/health")[0] == 200


WORKERS, QUEUE, TIMEOUT = 2, 2, 2.0


def test_http_service_survives_hostile_load(onnx_artifact, sample_dir, tmp_path):
    """Too many connections, a full body budget, decompression bombs, a truncated body, clients that
    vanish or trickle, chunked and kept-alive requests: answered (503/413/408/400/200) or dropped in
    bounded time, with bounded threads and memory, no traceback, and still serving afterwards."""
    bomb, big = bomb_png(tmp_path / "bomb.png", 30000, 30000, 1), bomb_png(tmp_path / "big.png", 13000, 13000)
    photo = min((sample_dir / "bees").iterdir(), key=lambda p: p.stat().st_size)  # fits a socket buffer
    body = photo.read_bytes()
    budget = max(len(body), bomb.stat().st_size, big.stat().st_size) + 1000  # each fits alone
    started = time.monotonic()
    with _serving(onnx_artifact, "--top-k", "2", "--workers", str(WORKERS), "--queue", str(QUEUE),
                  "--timeout", str(TIMEOUT), "--max-connections", "8", "--max-buffer", str(budget)) as (url, proc):
        assert _request(f"{url}/health")[0] == 200
        baseline = _proc_status(proc.pid)

        # 8 connections open: the 9th is answered 503 at once; the 8 are closed at their timeout.
        waited = time.monotonic()
        idle = [_raw(url, b"") for _ in range(7)] + [_raw(url, b"POST /predict HTTP/1.0\r\nContent-Length: 100000"
                                                          b"\r\n\r\n" + bytes(50000))]
        time.sleep(0.5)
        assert _status(_raw(url, b"GET /health HTTP/1.0\r\n\r\n")) == 503
        assert [_status(sock) for sock in idle] == [None] * 7 + [408]
        assert TIMEOUT - 0.2 < time.monotonic() - waited < TIMEOUT + 2

        # Part of one body already held: another image over what is left of the budget is refused (503).
        hog = _raw(url, b"POST /predict HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (2 * budget)
                   + bytes(budget - len(body) // 2))
        time.sleep(0.5)
        assert len(body) > 10000 and _post(url, body)[0] == 503
        assert _status(hog) == 408
        assert _post(url, body)[0] == 200  # the hog's bytes were given back

        status, answer = _request(f"{url}/predict", bomb.read_bytes())
        assert status == 400 and "decompression bomb" in answer["error"]
        status, answer = _request(f"{url}/predict", big.read_bytes())
        assert status == 400 and "over the 40,000,000-pixel cap" in answer["error"]
        assert _status(_raw(url, b"POST /predict HTTP/1.0\r\nContent-Length: 30000000\r\n\r\n")) == 413
        assert _status(_raw(url, b"POST /predict HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n")) == 400
        assert _status(_raw(url, b"GET /health HTTP/1.1\r\nX: " + bytes(20000) + b"\r\n\r\n")) == 431
        assert _status(_raw(url, b"BREW /pot HTCPCP/1.0\r\n\r\n")) == 400
        truncated = _raw(url, b"POST /predict HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body)
                         + body[:1000], shut=True)
        assert _status(truncated) == 400
        for _ in range(3):  # clients that vanish mid-request: one log line each, nothing else
            _raw(url, b"POST /predict HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body) + body).close()
            _raw(url, b"GET /heal").close()
        trickle = _raw(url, b"GET /hea")  # a byte now and then: the deadline still ends it
        trickled = time.monotonic()
        for byte in b"lth HTTP/1.0":
            if select.select([trickle], [], [], 0.4)[0]:  # the answer has come: stop trickling
                break
            trickle.sendall(bytes([byte]))
        assert time.monotonic() - trickled < TIMEOUT + 1 and _status(trickle) == 408

        # HTTP/1.1: chunked body with Expect: 100-continue, then a second request on the same connection.
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 4000]), body[i:i + 4000])
                           for i in range(0, len(body), 4000)) + b"0\r\n\r\n"
        kept = _raw(url, b"POST /predict?top_k=1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                         b"Expect: 100-continue\r\n\r\n")
        assert kept.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        kept.sendall(chunked)
        kept.sendall(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
        answers = b""
        while piece := kept.recv(65536):
            answers += piece
        kept.close()
        assert answers.count(b"HTTP/1.1 200 OK") == 2 and b"Connection: keep-alive" in answers, answers

        # Concurrent valid requests: all answered, identically.
        expected = EdgeModel.load(onnx_artifact).predict(photo, top_k=2)
        results: list[tuple[int, dict]] = []
        clients = [threading.Thread(target=lambda: results.extend(_request(f"{url}/predict", body)
                                                                  for _ in range(6))) for _ in range(WORKERS)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(30)
        assert len(results) == 6 * WORKERS and {status for status, _ in results} == {200}
        assert all([p["label"] for p in answer["predictions"]] == [label for label, _ in expected]
                   for _, answer in results)
        status, answer = _request(f"{url}/predict", body)
        assert status == 200 and abs(answer["predictions"][0]["score"] - expected[0][1]) < 1e-5
        final = _proc_status(proc.pid)
        # Decoding the 13000x13000 PNG took 2 GB per request before the pixel cap; now nothing is decoded.
        assert final["hwm_mb"] < baseline["hwm_mb"] + 100, (baseline, final)
        assert final["threads"] <= baseline["threads"] + WORKERS
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        log = proc.stderr.read()
    assert "Traceback" not in log and all(line.startswith("127.0.0.1 ") for line in log.splitlines()), log
    assert "busy: answered 503 (--max-connections 8)" in log and '"POST /predict HTTP/1.1" 503' in log
    assert time.monotonic() - started < 40


def test_http_service_start_up_errors_are_one_line(onnx_artifact, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = str(REPO / "examples" / "http_service.py")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    shutil.copy(sidecar_path(onnx_artifact), sidecar_path(bad))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cases = {"--port 70000": ([str(onnx_artifact), "--port", "70000"], "--port: must be 0..65535"),
                 "--top-k 0": ([str(onnx_artifact), "--top-k", "0"], "--top-k: must be at least 1"),
                 "--max-pixels 0": ([str(onnx_artifact), "--max-pixels", "0"], "--max-pixels: must be at least 1"),
                 "port in use": ([str(onnx_artifact), "--host", "127.0.0.1", "--port", str(taken.getsockname()[1])],
                                 "Address already in use"),
                 "bad artifact": ([str(bad), "--port", "0"], "bad.onnx")}
        for case, (args, message) in cases.items():
            run = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env,
                                 timeout=60)
            assert run.returncode in (1, 2) and run.stdout == "", (case, run)
            assert len(run.stderr.strip().splitlines()) == 1 and message in run.stderr, (case, run.stderr)
            assert run.stderr.startswith("http_service: error: "), (case, run.stderr)
