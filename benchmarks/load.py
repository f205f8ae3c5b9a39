"""A small HTTP load generator, run as its own process: `python -m benchmarks.load URL... --seconds S
--connections C [--token T]`. Each connection is a thread with a keep-alive socket that sends GETs back to
back over the given URLs (round robin) and reads each answer by its Content-Length (or its chunks); prints
one JSON line: requests, errors, seconds, requests per second, latency percentiles in milliseconds and its
own CPU seconds. Plain sockets, not `http.client`: the generator shares the machine with the server, and
`http.client` cost it ~0.17 ms of CPU a request, most of a cached answer's own cost."""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from urllib.parse import urlsplit


class _Answer(Exception):
    """The server closed the connection or answered something this generator does not read."""


class _Connection:
    def __init__(self, host: str, port: int) -> None:
        self.socket = socket.create_connection((host, port), timeout=10)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def _more(self) -> None:
        data = self.socket.recv(262144)
        if not data:
            raise _Answer("connection closed")
        self.buffer += data

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._more()
        taken, self.buffer = self.buffer[:size], self.buffer[size:]
        return taken

    def _line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            self._more()
        return self._take(end + 2)[:-2]

    def get(self, request: bytes) -> int:
        """Send one request; read its whole answer; its status."""
        self.socket.sendall(request)
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._more()
        head = self._take(end + 4).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        fields = {name.strip().lower(): value.strip()
                  for name, _, value in (line.partition(":") for line in head[1:] if line)}  # fmt: skip
        if "content-length" in fields:
            self._take(int(fields["content-length"]))
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            while size := int(self._line().split(b";")[0], 16):
                self._take(size + 2)
            while self._line():  # trailers, then the empty line
                pass
        else:
            raise _Answer(f"an answer without a length: {head[0]}")
        if fields.get("connection", "").lower() == "close":
            raise _Answer("the server closes the connection")
        return status

    def close(self) -> None:
        self.socket.close()


def _worker(
    urls: list[str],
    token: str | None,
    stop_at: float,
    start_index: int,
    latencies: list[float],
    errors: list[int],
) -> None:
    parts = urlsplit(urls[0])
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    extra = f"Authorization: Bearer {token}\r\n" if token else ""
    requests = [
        (f"GET {urlsplit(u)._replace(scheme='', netloc='').geturl()} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
         f"{extra}\r\n").encode()
        for u in urls
    ]  # fmt: skip
    connection = _Connection(host, port)
    index = start_index
    while time.perf_counter() < stop_at:
        request = requests[index % len(requests)]
        index += 1
        began = time.perf_counter()
        try:
            status = connection.get(request)
        except (OSError, ValueError, _Answer):
            errors.append(0)
            connection.close()
            connection = _Connection(host, port)
            continue
        if status != 200:
            errors.append(status)
            continue
        latencies.append(time.perf_counter() - began)
    connection.close()


def run(urls: list[str], seconds: float, connections: int, token: str | None) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[int] = []
    began, cpu_began = time.perf_counter(), time.process_time()
    stop_at = began + seconds
    threads = [
        threading.Thread(target=_worker, args=(urls, token, stop_at, i * 7, latencies, errors))
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
