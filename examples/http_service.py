"""A tiny HTTP image-classification service: ``edgetl.runtime`` + the standard library only.

    python examples/http_service.py model.onnx --host 0.0.0.0 --port 8080 [--top-k 5] [--threads 2]

    curl -s --data-binary @bee.jpg http://HOST:8080/predict          # -> {"predictions": [...], ...}
    curl -s --data-binary @bee.jpg 'http://HOST:8080/predict?top_k=1'
    curl -s http://HOST:8080/health                                  # -> {"status": "ok", ...}

POST /predict takes the raw bytes of one image (JPEG, PNG, BMP or WEBP) as the request body and
answers JSON ``{"predictions": [{"label", "score"}...], "ms": ...}``; an undecodable body is a 400 with
``{"error": ...}``. One ``EdgeModel`` serves every request thread (see ``edgetl.runtime`` on thread
safety). On start it prints ``listening on http://HOST:PORT`` (``--port 0`` picks a free port).

On a device: ``pip install --no-deps edgetl`` and ``pip install numpy pillow onnxruntime`` (or the
LiteRT / OpenVINO runtime for .tflite / .xml artifacts); TensorFlow is never needed.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from PIL import Image, UnidentifiedImageError

from edgetl.errors import EdgetlError
from edgetl.runtime import EdgeModel

MAX_BODY = 20 << 20  # bytes; a phone photo is a few MB


def make_handler(model: EdgeModel, default_top_k: int):
    class Handler(BaseHTTPRequestHandler):
        server_version = "edgetl-http/1"

        def do_GET(self):
            if urlparse(self.path).path != "/health":
                return self._reply(404, {"error": "not found; use POST /predict or GET /health"})
            self._reply(200, {"status": "ok", "model": model.path.name, "format": model.format,
                              "labels": model.labels, "input_size": list(model.input_size)})

        def do_POST(self):
            url = urlparse(self.path)
            if url.path != "/predict":
                return self._reply(404, {"error": "not found; use POST /predict or GET /health"})
            try:
                top_k = int(parse_qs(url.query).get("top_k", [default_top_k])[0])
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                return self._reply(400, {"error": "top_k and Content-Length must be integers"})
            if top_k < 1:
                return self._reply(400, {"error": "top_k must be at least 1"})
            if length <= 0:
                return self._reply(400, {"error": "send the image bytes as the request body"})
            if length > MAX_BODY:
                return self._reply(413, {"error": f"image larger than {MAX_BODY} bytes"})
            body = self.rfile.read(length)
            started = time.perf_counter()
            try:
                image = _decode(body)
                ranked = model.predict(image, top_k=top_k)
            except (EdgetlError, ValueError) as exc:
                return self._reply(400, {"error": str(exc)})
            self._reply(200, {"predictions": [{"label": label, "score": score} for label, score in ranked],
                              "ms": round((time.perf_counter() - started) * 1000, 2)})

        def _reply(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):  # one short line per request on stderr
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    return Handler


def _decode(body: bytes) -> Image.Image:
    # Same accepted formats as files (edgetl.preprocess): GIF/TIFF decode differently across libraries.
    from edgetl.preprocess import ACCEPTED_FORMATS

    try:
        with Image.open(io.BytesIO(body)) as image:
            if image.format not in ACCEPTED_FORMATS:
                raise ValueError(f"{image.format} images are not supported (use {', '.join(ACCEPTED_FORMATS)})")
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"cannot decode image ({exc.__class__.__name__})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve an exported edgetl artifact over HTTP.")
    parser.add_argument("artifact", help="model.onnx / model.tflite / model.xml with its sidecar .json")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        model = EdgeModel.load(args.artifact, device=args.device, threads=args.threads)
    except EdgetlError as exc:
        print(f"http_service: error: {exc}", file=sys.stderr)
        return exc.exit_code
    server = ThreadingHTTPServer((args.host, args.port), make_handler(model, args.top_k))
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
