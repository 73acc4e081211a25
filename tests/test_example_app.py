"""examples/http_service.py: started in a subprocess on a free local port, asked for a prediction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edgetl.runtime import EdgeModel
# The one place that makes artifacts (edgetl.export) and the tiny model behind them.
from test_runtime import export_artifacts, runtime_model_dir  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 60  # seconds for the service to load the model and print its address


@pytest.fixture(scope="module")
def onnx_artifact(runtime_model_dir, sample_dir, tmp_path_factory) -> Path:
    made = export_artifacts(runtime_model_dir, tmp_path_factory.mktemp("http_service") / "out", sample_dir,
                            formats=("onnx",))
    return made[("onnx", "fp32", "float32")]


@pytest.fixture
def service(onnx_artifact):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(REPO / "examples" / "http_service.py"), str(onnx_artifact),
                             "--host", "127.0.0.1", "--port", "0", "--top-k", "2", "--threads", "1"],
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
        yield line.split("listening on ", 1)[1]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


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
