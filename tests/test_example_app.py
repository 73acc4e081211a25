"""examples/http_service.py: started in a subprocess on a free local port, asked for a prediction."""

from __future__ import annotations

import contextlib
import json
import os
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
WORKERS, QUEUE, TIMEOUT = 2, 2, 2.0


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


def test_http_service_survives_hostile_load(onnx_artifact, sample_dir, tmp_path):
    """Idle clients, a full pool, decompression bombs, a truncated body and clients that vanish:
    answered (503/408/400) or dropped in bounded time, with bounded threads and memory, no traceback,
    and the service still answers /health and images afterwards (48 connections, loopback only)."""
    bomb, big = bomb_png(tmp_path / "bomb.png", 30000, 30000, 1), bomb_png(tmp_path / "big.png", 13000, 13000)
    photo = min((sample_dir / "bees").iterdir(), key=lambda p: p.stat().st_size)  # fits a socket buffer
    started = time.monotonic()
    with _serving(onnx_artifact, "--top-k", "2", "--workers", str(WORKERS), "--queue", str(QUEUE),
                  "--timeout", str(TIMEOUT)) as (url, proc):
        assert _request(f"{url}/health")[0] == 200
        baseline = _proc_status(proc.pid)

        # 20 clients promise a 100 kB body and send nothing; one complete request waits among them.
        # WORKERS are held, QUEUE wait, the rest get 503 at once; at TIMEOUT after accept all idle ones
        # get 408 and the complete one, though it waited past its deadline, is served.
        body = photo.read_bytes()
        promise = b"POST /predict HTTP/1.0\r\nContent-Length: 100000\r\n\r\n"
        waited = time.monotonic()
        idle = [_raw(url, promise) for _ in range(WORKERS)]
        time.sleep(0.2)
        complete = _raw(url, b"POST /predict HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        idle += [_raw(url, promise) for _ in range(20 - WORKERS)]
        time.sleep(0.5)
        held = _proc_status(proc.pid)
        assert _status(_raw(url, b"GET /health HTTP/1.0\r\n\r\n")) == 503  # full: refused without a thread
        codes = [_status(sock) for sock in idle]
        assert codes == [408] * (WORKERS + QUEUE - 1) + [503] * (21 - WORKERS - QUEUE), codes
        assert _status(complete) == 200
        assert time.monotonic() - waited < TIMEOUT + 2  # dropped at their deadline, queued ones too
        assert held["threads"] <= baseline["threads"] + WORKERS, (baseline, held)

        status, answer = _request(f"{url}/predict", bomb.read_bytes())
        assert status == 400 and "decompression bomb" in answer["error"]
        status, answer = _request(f"{url}/predict", big.read_bytes())
        assert status == 400 and "over the 40,000,000-pixel cap" in answer["error"]
        assert _status(_raw(url, b"POST /predict HTTP/1.0\r\nContent-Length: 30000000\r\n\r\n")) == 413
        truncated = _raw(url, b"POST /predict HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body)
                         + body[:1000], shut=True)
        assert _status(truncated) == 400
        for _ in range(3):  # clients that vanish mid-request: one log line each, nothing else
            _raw(url, b"POST /predict HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body) + body).close()
            _raw(url, b"GET /heal").close()
        time.sleep(0.5)  # they are gone; their workers are free again
        trickle = _raw(url, b"GET /hea")  # a byte now and then: the deadline still ends it
        try:
            for byte in b"lth HTTP/1.0":
                time.sleep(0.4)
                trickle.sendall(bytes([byte]))
        except OSError:
            pass
        assert _status(trickle) in (None, 408)

        # Concurrent valid requests (each client's last connection may not have released its slot
        # yet: 2 x WORKERS <= WORKERS + QUEUE slots): all answered, identically.
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

        assert _request(f"{url}/health")[0] == 200
        status, answer = _request(f"{url}/predict", body)
        assert status == 200 and abs(answer["predictions"][0]["score"] - expected[0][1]) < 1e-5
        final = _proc_status(proc.pid)
        # Decoding the 13000x13000 PNG took 2 GB per request before the pixel cap; now nothing is decoded.
        assert final["hwm_mb"] < baseline["hwm_mb"] + 100, (baseline, final)
        assert final["threads"] <= baseline["threads"] + WORKERS
        proc.terminate()
        proc.wait(timeout=10)
        log = proc.stderr.read()
    assert "Traceback" not in log and all(line.startswith("127.0.0.1 ") for line in log.splitlines()), log
    assert log.count("busy: answered 503") >= 21 - WORKERS - QUEUE + 1  # the idle wave, /health (+ vanishing ones)
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
