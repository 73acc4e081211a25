"""A tiny HTTP image-classification service: ``edgetl.runtime`` + the standard library only.

    python examples/http_service.py model.onnx --host 0.0.0.0 --port 8080 [--top-k 5] [--threads 2]
        [--workers 4] [--queue 16] [--timeout 5] [--max-connections 1000] [--max-buffer 134217728]
        [--max-pixels 40000000] [--max-body 20971520]

    curl -s --data-binary @bee.jpg http://HOST:8080/predict          # -> {"predictions": [...], ...}
    curl -s --data-binary @bee.jpg 'http://HOST:8080/predict?top_k=1'
    curl -s http://HOST:8080/health                                  # -> {"status": "ok", ...}

POST /predict takes the raw bytes of one image (JPEG, PNG, BMP or WEBP) as the request body
(``Content-Length`` or chunked; ``Expect: 100-continue`` is answered) and answers JSON
``{"predictions": [{"label", "score"}...], "ms": ...}``; errors are JSON ``{"error": ...}``: 400 a
malformed request, an undecodable image, one over the pixel cap (decompression bombs included) or a body
shorter than announced; 408 a request not complete within ``--timeout`` seconds; 413 a body over
``--max-body``; 431 headers over 16 KiB; 503 when ``--workers`` images are in inference and ``--queue``
more wait, when ``--max-connections`` are open, or when the bodies being received already hold
``--max-buffer`` bytes. Images are decoded exactly as training decoded them
(``edgetl.preprocess.open_image`` under the artifact's recorded decode rules; ``--max-pixels``
overrides its pixel cap).

Idle and trickling connections cost a socket, not a worker: one asyncio event loop reads every
connection (HTTP/1.1 keep-alive, HTTP/1.0) and hands only complete requests to a fixed pool of
``--workers`` inference threads. Each request has ``--timeout`` seconds from its first awaited byte
(for a kept-alive connection: from the previous answer) to arrive whole; then the connection is closed
(408 if part of a request had come). Memory is bounded: about ``--max-connections`` x 48 KiB of
socket buffers, plus ``--max-buffer`` bytes of bodies (counted as they arrive, not as announced), plus
``--workers`` x 8 bytes x max pixels of decoded images. One ``EdgeModel`` serves every worker (see
``edgetl.runtime`` on thread safety). On start it prints ``listening on http://HOST:PORT`` (``--port
0`` picks a free port); it binds 127.0.0.1 unless told otherwise. Start-up failures (bad arguments,
port in use, unusable artifact) are one line, exit 2 (1 for an artifact that fails its checks).

On a device: ``pip install --no-deps edgetl`` and ``pip install numpy pillow onnxruntime`` (or the
LiteRT / OpenVINO runtime for .tflite / .xml artifacts); TensorFlow is never needed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import http.client
import io
import json
import resource
import signal
import socket
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from edgetl.errors import EdgetlError
from edgetl.preprocess import DecodeRules, open_image
from edgetl.runtime import EdgeModel

MAX_BODY = 20 << 20  # bytes; a phone photo is a few MB
MAX_HEADER = 16 << 10  # request line + headers; the stream buffer pauses the socket at twice this
LINGER = 1.0  # seconds a closing socket keeps draining, so an error answer is not lost to a reset
CHUNK = 64 << 10


class HttpError(Exception):
    """An answer that ends the connection: status + one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class Limits:
    timeout: float = 5.0
    max_body: int = MAX_BODY
    max_buffer: int = 128 << 20  # body bytes held at once, over all connections
    max_connections: int = 1000
    workers: int = 4
    queue: int = 16


@dataclasses.dataclass
class Request:
    method: str
    target: str
    version: str
    headers: http.client.HTTPMessage
    body: bytes = b""

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("Connection", "").lower()
        return "close" not in connection if self.version == "HTTP/1.1" else "keep-alive" in connection


def _log(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


# -- HTTP/1.1 request reading ----------------------------------------------------------------------
async def read_head(reader: asyncio.StreamReader, first: bytes) -> Request:
    """Request line + headers, ``first`` being the byte already read. Header syntax is the standard
    library's own parser (the one ``http.server`` uses); the stream's limit bounds the size."""
    try:
        block = first + await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        raise HttpError(400, "the request ended before its headers did") from None
    except asyncio.LimitOverrunError:
        raise HttpError(431, f"request line and headers over {MAX_HEADER} bytes") from None
    line, _, rest = block.lstrip(b"\r\n").partition(b"\r\n")
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise HttpError(400, "malformed request line")
    try:
        headers = http.client.parse_headers(io.BytesIO(rest))
    except http.client.HTTPException as exc:
        raise HttpError(400, f"malformed headers: {exc.__class__.__name__}") from None
    if any(key.strip() != key or not key for key in headers.keys()):
        raise HttpError(400, "malformed header name")
    return Request(parts[0], parts[1], parts[2], headers)


class BodyBudget:
    """Body bytes held by all connections, charged as they arrive: a client that announces 20 MB and
    sends nothing costs nothing. Over the budget the request is refused (503), not queued."""

    def __init__(self, limit: int):
        self.limit, self.held = limit, 0

    def take(self, n: int) -> None:
        if self.held + n > self.limit:
            raise HttpError(503, "server busy receiving other images; retry shortly")
        self.held += n

    def give(self, n: int) -> None:
        self.held -= n


async def read_body(reader, writer, request: Request, limits: Limits, budget: BodyBudget,
                    held: list[int]) -> bytes:
    """The body by Content-Length or chunked, capped at ``max_body``; ``held[0]`` counts the bytes
    charged to the budget (the caller gives them back)."""
    headers = request.headers
    chunked = headers.get("Transfer-Encoding", "").strip().lower()
    if chunked and chunked != "chunked":
        raise HttpError(501, f"transfer coding {chunked!r} not supported; send Content-Length or chunked")
    if chunked and "Content-Length" in headers:
        raise HttpError(400, "both Content-Length and Transfer-Encoding")
    lengths = [value.strip() for value in headers.get_all("Content-Length") or []]
    if len(set(lengths)) > 1:
        raise HttpError(400, "conflicting Content-Length headers")
    if lengths and not lengths[0].isdigit():
        raise HttpError(400, "Content-Length must be a non-negative integer")
    length = int(lengths[0]) if lengths else 0
    if length > limits.max_body:
        raise HttpError(413, f"image larger than {limits.max_body} bytes")
    if headers.get("Expect", "").lower() == "100-continue" and request.version == "HTTP/1.1":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = bytearray()

    async def take(n: int) -> None:  # n more body bytes, in socket-sized pieces charged as they come
        while n:
            piece = await reader.read(min(n, CHUNK))
            if not piece:
                raise HttpError(400, f"the body ended after {len(body)} bytes")
            if len(body) + len(piece) > limits.max_body:
                raise HttpError(413, f"image larger than {limits.max_body} bytes")
            budget.take(len(piece))
            held[0] += len(piece)
            body.extend(piece)
            n -= len(piece)

    if not chunked:
        await take(length)
        return bytes(body)
    while True:  # chunk-size [; extensions] CRLF data CRLF ... 0 CRLF [trailers] CRLF
        try:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except (ValueError, asyncio.LimitOverrunError):
            raise HttpError(400, "malformed chunk size") from None
        except asyncio.IncompleteReadError:
            raise HttpError(400, f"the body ended after {len(body)} bytes") from None
        if size < 0 or len(body) + size > limits.max_body:
            raise HttpError(413, f"image larger than {limits.max_body} bytes")
        if size == 0:
            break
        await take(size)
        if await reader.readexactly(2) != b"\r\n":
            raise HttpError(400, "malformed chunk")
    while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers: read and ignored
        pass
    return bytes(body)


# -- the service -----------------------------------------------------------------------------------
class Service:
    """Connections on the event loop; complete requests to ``workers`` inference threads."""

    def __init__(self, model: EdgeModel, rules: DecodeRules, top_k: int, limits: Limits):
        self.model, self.rules, self.top_k, self.limits = model, rules, top_k, limits
        self.pool = ThreadPoolExecutor(limits.workers, thread_name_prefix="inference")
        self.budget = BodyBudget(limits.max_buffer)
        self.connections = 0
        self.in_inference = 0  # requests running or waiting in the pool

    async def on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = (writer.get_extra_info("peername") or ("?",))[0]
        self.connections += 1
        try:
            if self.connections > self.limits.max_connections:
                _log(f"{peer} busy: answered 503 (--max-connections {self.limits.max_connections})")
                return await self._finish(writer, reader, 503, {"error": "server busy; retry shortly"})
            while await self._one_request(reader, writer, peer):
                pass
        except (ConnectionError, TimeoutError) as exc:
            _log(f"{peer} client went away ({exc.__class__.__name__})")
        except asyncio.CancelledError:  # shutting down; returning (not raising) keeps 3.11's asyncio quiet
            pass
        except Exception as exc:  # a bug: still one line, the service keeps serving
            _log(f"{peer} error: {exc.__class__.__name__}: {exc}")
        finally:
            self.connections -= 1
            writer.close()

    async def _one_request(self, reader, writer, peer: str) -> bool:
        """Read, answer; True when the connection stays open for another request."""
        held, first, request = [0], b"", None
        try:
            try:
                async with asyncio.timeout(self.limits.timeout):
                    first = await reader.read(1)
                    if not first:  # closed between requests
                        return False
                    request = await read_head(reader, first)
                    request.body = await read_body(reader, writer, request, self.limits, self.budget, held)
            except TimeoutError:
                if not first:  # an idle connection: nothing to answer, just closed
                    return False
                raise HttpError(408, "request not received in time") from None
            except asyncio.IncompleteReadError:
                raise HttpError(400, "the request ended before its body did") from None
            except asyncio.LimitOverrunError:
                raise HttpError(400, "a chunk-size or trailer line too long") from None
            status, payload = await self._answer(request)
        except HttpError as exc:  # the stream's state is unknown: answer and close
            self.budget.give(held[0])  # before lingering: the bytes are dropped now, not when the client goes
            held[0] = 0
            self._log_request(peer, request, exc.status)
            await self._finish(writer, reader, exc.status, {"error": str(exc)}, request)
            return False
        finally:
            self.budget.give(held[0])
        self._log_request(peer, request, status)
        keep = request.keep_alive
        writer.write(_response(status, payload, request.version, keep))
        async with asyncio.timeout(self.limits.timeout):  # a client that never reads its answer
            await writer.drain()
        return keep

    async def _answer(self, request: Request) -> tuple[int, dict]:
        url = urlsplit(request.target)
        if request.method == "GET" and url.path == "/health":
            return 200, {"status": "ok", "model": self.model.path.name, "format": self.model.format,
                         "labels": self.model.labels, "input_size": list(self.model.input_size)}
        if (request.method, url.path) != ("POST", "/predict"):
            return 404, {"error": "not found; use POST /predict or GET /health"}
        try:
            top_k = int(parse_qs(url.query).get("top_k", [self.top_k])[0])
        except ValueError:
            return 400, {"error": "top_k must be an integer"}
        if top_k < 1:
            return 400, {"error": "top_k must be at least 1"}
        if not request.body:
            return 400, {"error": "send the image bytes as the request body"}
        if self.in_inference >= self.limits.workers + self.limits.queue:
            raise HttpError(503, "server busy; retry shortly")
        self.in_inference += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, self._classify, request.body, top_k)
        finally:
            self.in_inference -= 1

    def _classify(self, body: bytes, top_k: int) -> tuple[int, dict]:  # on an inference thread
        started = time.perf_counter()
        try:
            ranked = self.model.predict(open_image(body, self.rules), top_k=top_k)
        except (EdgetlError, ValueError) as exc:  # ImageDecodeError is a ValueError
            return 400, {"error": str(exc)}
        except Exception as exc:  # a runtime failure: answer, log one line, keep serving
            _log(f"inference failed: {exc.__class__.__name__}: {exc}")
            return 500, {"error": "inference failed"}
        return 200, {"predictions": [{"label": label, "score": score} for label, score in ranked],
                     "ms": round((time.perf_counter() - started) * 1000, 2)}

    async def _finish(self, writer, reader, status: int, payload: dict, request: Request | None = None) -> None:
        """Answer and close. The socket is half-closed and what the client still sends is drained for
        up to LINGER seconds: closing on unread data sends a reset, which can drop the answer."""
        writer.write(_response(status, payload, request.version if request else "HTTP/1.1", False))
        try:
            async with asyncio.timeout(LINGER):
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
                for _ in range(16):  # at most 1 MB
                    if not await reader.read(CHUNK):
                        break
        except (TimeoutError, ConnectionError):
            pass

    @staticmethod
    def _log_request(peer: str, request: Request | None, status: int) -> None:
        line = f"{request.method} {request.target[:200]} {request.version}" if request else "-"
        _log(f"{peer} \"{line}\" {status}")


def _response(status: int, payload: dict, version: str, keep_alive: bool) -> bytes:
    data = json.dumps(payload).encode()
    head = (f"{version} {status} {HTTPStatus(status).phrase}\r\nServer: edgetl-http/2\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n")
    if status == 503:
        head += "Retry-After: 1\r\n"
    return head.encode() + b"\r\n" + data


async def serve(sock: socket.socket, service: Service) -> None:
    server = await asyncio.start_server(service.on_connection, sock=sock, limit=MAX_HEADER)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    host, port = sock.getsockname()[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    async with server:
        await stop.wait()
    service.pool.shutdown(wait=False, cancel_futures=True)


# -- command line ----------------------------------------------------------------------------------
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
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def _open_files_for(connections: int) -> None:
    """Raise the open-file limit to fit the connections (each is one descriptor), up to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 64  # the model's files, the listening socket, the runtime's own
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY
                                                    else min(wanted, hard), hard))


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(description="Serve an exported edgetl artifact over HTTP.")
    parser.add_argument("artifact", help="model.onnx / model.tflite / model.xml with its sidecar .json")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_bounded_int(0, 65535), default=8080, help="0 picks a free port")
    parser.add_argument("--top-k", type=_bounded_int(1), default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=_bounded_int(1), default=None, help="runtime intra-op threads")
    parser.add_argument("--workers", type=_bounded_int(1, 256), default=4, help="images in inference at once")
    parser.add_argument("--queue", type=_bounded_int(0), default=16,
                        help="complete requests that may wait for a worker; beyond them: 503")
    parser.add_argument("--timeout", type=_positive_float, default=5.0,
                        help="seconds a request has to arrive whole, and an idle connection to start one "
                             "(raise it for slow uplinks)")
    parser.add_argument("--max-connections", type=_bounded_int(1), default=1000,
                        help="open connections; beyond them: 503")
    parser.add_argument("--max-buffer", type=_bounded_int(1), default=128 << 20,
                        help="body bytes held at once over all connections; beyond them: 503")
    parser.add_argument("--max-pixels", type=_bounded_int(1), default=None,
                        help="pixel cap of a decoded image (default: the artifact's recipe, 40 MP)")
    parser.add_argument("--max-body", type=_bounded_int(1), default=MAX_BODY, help="largest body in bytes")
    args = parser.parse_args(argv)
    limits = Limits(args.timeout, args.max_body, args.max_buffer, args.max_connections, args.workers, args.queue)
    # Pillow warns from 89 MP up; the pixel cap already answers those images with a 400.
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")

    try:  # bind first: a port in use fails before the model's load time
        _open_files_for(limits.max_connections)
        sock = socket.create_server((args.host, args.port), backlog=min(limits.max_connections, 4096))
    except (OSError, OverflowError, ValueError) as exc:
        _log(f"http_service: error: cannot listen on {args.host}:{args.port}: {exc}")
        return 2
    try:
        model = EdgeModel.load(args.artifact, device=args.device, threads=args.threads)
        rules = model.recipe.decode
        if args.max_pixels:
            rules = dataclasses.replace(rules, max_pixels=args.max_pixels)
    except EdgetlError as exc:
        sock.close()
        _log(f"http_service: error: {exc}")
        return exc.exit_code
    except Exception as exc:  # a runtime's own error on an unusable file: still one line
        sock.close()
        _log(f"http_service: error: cannot load {args.artifact}: {exc.__class__.__name__}: {exc}")
        return 2
    asyncio.run(serve(sock, Service(model, rules, args.top_k, limits)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
