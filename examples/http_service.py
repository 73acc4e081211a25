"""A tiny HTTP image-classification service: ``edgetl.runtime`` + the standard library only.

    python examples/http_service.py model.onnx --host 0.0.0.0 --port 8080 [--top-k 5] [--threads 2]
        [--workers 4] [--queue 16] [--timeout 5] [--max-pixels 40000000] [--max-body 20971520]

    curl -s --data-binary @bee.jpg http://HOST:8080/predict          # -> {"predictions": [...], ...}
    curl -s --data-binary @bee.jpg 'http://HOST:8080/predict?top_k=1'
    curl -s http://HOST:8080/health                                  # -> {"status": "ok", ...}

POST /predict takes the raw bytes of one image (JPEG, PNG, BMP or WEBP) as the request body and
answers JSON ``{"predictions": [{"label", "score"}...], "ms": ...}``; errors are JSON ``{"error": ...}``:
400 an undecodable image, one over the pixel cap (decompression bombs included) or a body shorter than
its Content-Length; 408 a request not received within ``--timeout`` seconds; 413 a body over
``--max-body``; 503 when all ``--workers`` are busy and ``--queue`` more connections already wait.
Images are decoded exactly as training decoded them (``edgetl.preprocess.open_image`` under the
artifact's recorded decode rules; ``--max-pixels`` overrides its pixel cap).

Bounded by construction: one accepting thread hands connections to a fixed pool of ``--workers``
threads (HTTP/1.0, one request per connection); each connection has ``--timeout`` seconds from accept
to deliver its whole request (headers and body), so idle or trickling clients are dropped, and a
wave of them blocks the service for about ``--timeout`` seconds, queue included; memory is about
``--workers`` x (body + 8 bytes x max pixels) at most. Client disconnects are one log line. One ``EdgeModel``
serves every worker (see ``edgetl.runtime`` on thread safety). On start it prints
``listening on http://HOST:PORT`` (``--port 0`` picks a free port); it binds 127.0.0.1 unless told
otherwise. Start-up failures (bad arguments, port in use, unusable artifact) are one line, exit 2.

On a device: ``pip install --no-deps edgetl`` and ``pip install numpy pillow onnxruntime`` (or the
LiteRT / OpenVINO runtime for .tflite / .xml artifacts); TensorFlow is never needed.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import json
import signal
import socket
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse

from edgetl.errors import EdgetlError
from edgetl.preprocess import DecodeRules, open_image
from edgetl.runtime import EdgeModel

MAX_BODY = 20 << 20  # bytes; a phone photo is a few MB
LINGER_MAX = 256  # refused sockets kept half-open for a second so their 503 is not lost to a reset
_BUSY = json.dumps({"error": "server busy; retry shortly"}).encode()
_BUSY_RESPONSE = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                  b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY), _BUSY))


def _drain(sock: socket.socket) -> None:
    """Read and drop what has arrived on a non-blocking socket (at most 1 MB)."""
    for _ in range(16):
        try:
            if not sock.recv(65536):
                return
        except BlockingIOError:
            return


def _log(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class _DeadlineReader(io.RawIOBase):
    """Socket reads that all end at one deadline: a client trickling a byte at a time cannot keep a
    worker longer than a silent one. Past the deadline, bytes that have already arrived are still
    read (a request that waited in the queue complete is served); waiting for more is a timeout."""

    def __init__(self, sock: socket.socket, deadline: float, write_timeout: float):
        self._sock, self._deadline, self._write_timeout = sock, deadline, write_timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self._deadline - time.monotonic()
        self._sock.settimeout(max(left, 0.0))
        try:
            return self._sock.recv_into(buffer)
        except BlockingIOError:  # timeout 0: nothing has arrived
            raise TimeoutError("request not received in time") from None
        finally:
            self._sock.settimeout(self._write_timeout)  # responses (and http.server's errors) block again


class BoundedHTTPServer(HTTPServer):
    """Accepts on the serving thread, handles on a fixed thread pool; answers 503 itself, without a
    thread, when ``workers`` connections are in service and ``queue`` more wait."""

    request_queue_size = 128  # listen backlog: a burst is accepted (and answered) instead of SYN-dropped

    def __init__(self, address, workers: int, queue: int, timeout: float):
        self.request_timeout = timeout
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="http-worker")
        self._slots = threading.BoundedSemaphore(workers + queue)
        self._lingering: collections.deque = collections.deque()  # (close at, socket) of 503s
        self._worker = threading.local()  # when the connection a worker serves was accepted
        super().__init__(address, BaseHTTPRequestHandler)  # the real handler is set once the model loads

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            return self._refuse(request, client_address)
        try:
            self._pool.submit(self._serve, request, client_address, time.monotonic())
        except RuntimeError:  # shutting down
            self._slots.release()
            self.shutdown_request(request)

    def _serve(self, request, client_address, accepted: float):
        self._worker.accepted = accepted
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def _refuse(self, request, client_address):
        """503 without a thread. The socket lingers half-closed for a second, then whatever the client
        sent meanwhile is drained before closing: closing on unread data would send a reset, which
        makes the client's kernel drop the 503 it has not read yet."""
        try:
            request.setblocking(False)
            _drain(request)
            request.send(_BUSY_RESPONSE)  # a few hundred bytes: fits any fresh socket's send buffer
            request.shutdown(socket.SHUT_WR)
        except OSError:
            self.close_request(request)
        else:
            self._lingering.append((time.monotonic() + 1.0, request))
            while len(self._lingering) > LINGER_MAX:
                self._close_lingering(self._lingering.popleft()[1])
        _log(f"{client_address[0]} busy: answered 503")

    def service_actions(self):  # the serving loop calls this at least every poll interval
        while self._lingering and self._lingering[0][0] <= time.monotonic():
            self._close_lingering(self._lingering.popleft()[1])

    def _close_lingering(self, request):
        try:
            _drain(request)
        except OSError:
            pass
        self.close_request(request)

    def request_deadline(self) -> float:
        """The connection being served has until this time (monotonic) to deliver its request: the
        timeout counts from accept, so clients queued behind idle ones do not hold workers anew."""
        return getattr(self._worker, "accepted", time.monotonic()) + self.request_timeout

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            _log(f"{client_address[0]} client went away ({exc.__class__.__name__})")
        else:  # a bug: still one line, the service keeps serving
            _log(f"{client_address[0]} error: {exc.__class__.__name__}: {exc}")

    def server_close(self):
        super().server_close()
        while self._lingering:
            self.close_request(self._lingering.popleft()[1])
        self._pool.shutdown(wait=False, cancel_futures=True)


def make_handler(model: EdgeModel, default_top_k: int, rules: DecodeRules | None = None,
                 max_body: int = MAX_BODY):
    rules = rules or model.recipe.decode

    class Handler(BaseHTTPRequestHandler):
        server_version = "edgetl-http/1"

        def setup(self):
            super().setup()
            if isinstance(self.server, BoundedHTTPServer):
                self.rfile.close()  # the socket's own reader: replaced, the socket stays open
                self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self.server.request_deadline(),
                                                               self.server.request_timeout))

        def _reply(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

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
            if length > max_body:
                return self._reply(413, {"error": f"image larger than {max_body} bytes"})
            try:
                body = self.rfile.read(length)
            except TimeoutError:
                return self._reply(408, {"error": "request body not received in time"})
            if len(body) < length:
                return self._reply(400, {"error": f"the body ended after {len(body)} of {length} bytes"})
            started = time.perf_counter()
            try:
                ranked = model.predict(open_image(body, rules), top_k=top_k)
            except (EdgetlError, ValueError) as exc:  # ImageDecodeError is a ValueError
                return self._reply(400, {"error": str(exc)})
            except Exception as exc:  # a runtime failure: answer, log one line, keep serving
                self.log_error("inference failed: %s: %s", exc.__class__.__name__, exc)
                return self._reply(500, {"error": "inference failed"})
            self._reply(200, {"predictions": [{"label": label, "score": score} for label, score in ranked],
                              "ms": round((time.perf_counter() - started) * 1000, 2)})

        def log_message(self, format, *args):  # one short line per request on stderr
            _log(f"{self.address_string()} {format % args}")

    return Handler


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + error
        _log(f"http_service: error: {message}")
        sys.exit(2)


def _bounded_int(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {low}..{high}, got {value}" if high is not None
                                             else f"must be at least {low}, got {value}")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(description="Serve an exported edgetl artifact over HTTP.")
    parser.add_argument("artifact", help="model.onnx / model.tflite / model.xml with its sidecar .json")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_bounded_int(0, 65535), default=8080, help="0 picks a free port")
    parser.add_argument("--top-k", type=_bounded_int(1), default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=_bounded_int(1), default=None, help="runtime intra-op threads")
    parser.add_argument("--workers", type=_bounded_int(1), default=4, help="requests served at once")
    parser.add_argument("--queue", type=_bounded_int(0), default=16,
                        help="connections that may wait for a worker; beyond them: 503")
    parser.add_argument("--timeout", type=_positive_float, default=5.0,
                        help="seconds from accept a connection has to deliver its whole request "
                             "(raise it for slow uplinks)")
    parser.add_argument("--max-pixels", type=_bounded_int(1), default=None,
                        help="pixel cap of a decoded image (default: the artifact's recipe, 40 MP)")
    parser.add_argument("--max-body", type=_bounded_int(1), default=MAX_BODY, help="largest body in bytes")
    args = parser.parse_args(argv)
    # Pillow warns from 89 MP up; the pixel cap already answers those images with a 400.
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")

    try:  # bind first: a port in use fails before the model's load time
        server = BoundedHTTPServer((args.host, args.port), args.workers, args.queue, args.timeout)
    except (OSError, OverflowError) as exc:
        _log(f"http_service: error: cannot listen on {args.host}:{args.port}: {exc}")
        return 2
    try:
        model = EdgeModel.load(args.artifact, device=args.device, threads=args.threads)
        rules = model.recipe.decode
        if args.max_pixels:
            rules = dataclasses.replace(rules, max_pixels=args.max_pixels)
    except EdgetlError as exc:
        server.server_close()
        _log(f"http_service: error: {exc}")
        return exc.exit_code
    except Exception as exc:  # a runtime's own error on an unusable file: still one line
        server.server_close()
        _log(f"http_service: error: cannot load {args.artifact}: {exc.__class__.__name__}: {exc}")
        return 2
    server.RequestHandlerClass = make_handler(model, args.top_k, rules, args.max_body)
    host, port = server.server_address[:2]
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
