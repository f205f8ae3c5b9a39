"""A small HTTP load generator, run as its own process: `python -m benchmarks.load URL... --seconds S
--connections C [--token T]`. Each connection is a thread with a keep-alive `http.client` connection that
sends GETs back to back over the given URLs (round robin); prints one JSON line: requests, errors, seconds,
requests per second, latency percentiles in milliseconds and its own CPU seconds."""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from urllib.parse import urlsplit


def _worker(
    urls: list[str],
    headers: dict[str, str],
    stop_at: float,
    start_index: int,
    latencies: list[float],
    errors: list[int],
) -> None:
    parts = urlsplit(urls[0])
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    paths = [urlsplit(u)._replace(scheme="", netloc="").geturl() for u in urls]
    index = start_index
    while time.perf_counter() < stop_at:
        path = paths[index % len(paths)]
        index += 1
        began = time.perf_counter()
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                errors.append(response.status)
                continue
        except (OSError, http.client.HTTPException):
            errors.append(0)
            connection.close()
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
            continue
        latencies.append(time.perf_counter() - began)
    connection.close()


def run(urls: list[str], seconds: float, connections: int, token: str | None) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    latencies: list[float] = []
    errors: list[int] = []
    began, cpu_began = time.perf_counter(), time.process_time()
    stop_at = began + seconds
    threads = [
        threading.Thread(target=_worker, args=(urls, headers, stop_at, i * 7, latencies, errors))
        for i in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    ordered = sorted(latencies)

    def percentile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("inf")

    return {
        "requests": len(ordered),
        "errors": len(errors),
        "seconds": round(elapsed, 3),
        "requests_per_s": len(ordered) / elapsed,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "max_ms": ordered[-1] * 1000 if ordered else float("inf"),
        "cpu_s": time.process_time() - cpu_began,  # this process's CPU: the load generator's own cost
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("urls", nargs="+")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--token")
    args = parser.parse_args()
    print(json.dumps(run(args.urls, args.seconds, args.connections, args.token)))


if __name__ == "__main__":
    main()
