"""Requests per second of ``examples/http_service.py`` with 1, 4 and 16 concurrent clients.

    .venv/bin/python tools/bench_service.py                  # builds the efficientnet_lite0 ONNX INT8 artifact
    .venv/bin/python tools/bench_service.py a.onnx b.tflite  # artifacts with sidecars

Per artifact the service runs in its own process (``--workers``, runtime ``--threads 1``); each client
is a thread holding one HTTP/1.1 keep-alive connection that POSTs the same sample JPEG again and again
(decode + resize + inference + JSON per request). The client counts are interleaved round by round
(``--rounds`` rounds of ``--seconds`` each) so load drift hits all alike; the table gives the median
requests/s and the latency median (p90) over all requests of that count. Clients and service share the
machine's cores: on a small box this is a lower bound of what the service does for remote clients.
Replaces the block between the ``bench_service`` markers in ``tools/RESULTS-runtime.md``.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgetl.timing import machine_summary  # noqa: E402
from bench_verify import build  # noqa: E402  (tools/ is the script's own folder)
from results_section import write_section  # noqa: E402

BEGIN, END = "<!-- bench_service -->", "<!-- /bench_service -->"
PHOTO = min((REPO / "edgetl" / "samples" / "hymenoptera" / "bees").iterdir(), key=lambda p: p.stat().st_size)
def start_service(artifact: Path, workers: int) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, str(REPO / "examples" / "http_service.py"), str(artifact),
                             "--port", "0", "--threads", "1", "--workers", str(workers), "--queue", "64"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on http://"):
        proc.kill()
        sys.exit(f"bench_service: the service did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def one_round(port: int, clients: int, seconds: float, body: bytes) -> tuple[float, list[float]]:
    """``clients`` keep-alive clients for ``seconds``: (requests/s, each request's latency in ms)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    start = threading.Barrier(clients + 1)

    def client(mine: list[float]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        start.wait()
        end = time.monotonic() + seconds
        while (sent := time.monotonic()) < end:
            connection.request("POST", "/predict?top_k=1", body)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                errors.append(str(response.status))
            mine.append((time.monotonic() - sent) * 1000)
        connection.close()

    threads = [threading.Thread(target=client, args=(mine,)) for mine in latencies]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.monotonic()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    if errors:
        sys.exit(f"bench_service: {len(errors)} requests failed ({sorted(set(errors))})")
    done = [ms for mine in latencies for ms in mine]
    return len(done) / elapsed, done


def measure(artifact: Path, counts: list[int], rounds: int, seconds: float, workers: int) -> list[dict]:
    body = PHOTO.read_bytes()
    proc, port = start_service(artifact, workers)
    try:
        one_round(port, max(counts), 1.0, body)  # warm-up: runtime first use, threads, page cache
        rates: dict[int, list[float]] = {n: [] for n in counts}
        latency: dict[int, list[float]] = {n: [] for n in counts}
        for _ in range(rounds):
            for n in counts:
                rate, done = one_round(port, n, seconds, body)
                rates[n].append(rate)
                latency[n] += done
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return [{"artifact": artifact.name, "clients": n, "rps": statistics.median(rates[n]),
             "p50": statistics.median(latency[n]), "p90": statistics.quantiles(latency[n], n=10)[-1],
             "requests": len(latency[n])} for n in counts]


def render(rows: list[dict], args, load: tuple[str, str]) -> str:
    lines = [BEGIN, "## HTTP service throughput (`examples/http_service.py`)", "",
             f"Written by `tools/bench_service.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
             f"{machine_summary()} (shared with other jobs while measured; load average "
             f"{load[0]} before, {load[1]} after), model `efficientnet_lite0` (ImageNet head, 224 px), "
             f"service `--workers {args.workers} --threads 1`, {args.rounds} interleaved rounds of "
             f"{args.seconds:g} s per client count.", "",
             f"Each client holds one HTTP/1.1 keep-alive connection and POSTs `{PHOTO.name}` "
             f"({PHOTO.stat().st_size} bytes) again and again: JPEG decode, resize, inference and JSON per "
             "request. Clients and service share the cores.", "",
             "| artifact | clients | requests/s (median of rounds) | latency ms median (p90) | requests |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['artifact']} | {r['clients']} | {r['rps']:.1f} | {r['p50']:.1f} ({r['p90']:.1f}) | "
                     f"{r['requests']} |")
    lines += ["", "More clients than cores add latency, not throughput: requests wait for a worker (up to "
              "`--queue`, then 503), the connections themselves cost no worker.", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="*", type=Path)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "tools" / "RESULTS-runtime.md")
    args = parser.parse_args()
    counts = [int(n) for n in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="edgetl-bench-service-") as work:
        paths = args.artifacts or build(Path(work), formats=("onnx",), modes=("int8",))
        before = Path("/proc/loadavg").read_text().split()[0]
        rows = [row for path in paths for row in measure(path, counts, args.rounds, args.seconds, args.workers)]
        after = Path("/proc/loadavg").read_text().split()[0]
    block = render(rows, args, (before, after))
    print(block)
    write_section(args.out, BEGIN, END, block)


if __name__ == "__main__":
    main()
