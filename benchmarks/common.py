"""Shared benchmark plumbing: hardware description, medians, process-tree memory, the results table."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


@dataclass
class Result:
    name: str
    unit: str
    runs: list[float]
    target: str = ""
    meets_target: bool | None = None
    notes: dict[str, object] = field(default_factory=dict)
    # The same work done the plainest way, measured in the same run (same machine, same hour): an absolute
    # figure moves with the machine's load, its ratio to the floor much less.
    floor_runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def floor(self) -> float | None:
        return statistics.median(self.floor_runs) if self.floor_runs else None

    @property
    def ratio(self) -> float | None:
        """The figure over its floor (median over median)."""
        return self.median / self.floor if self.floor else None


def hardware() -> dict[str, object]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


class PeakMemory:
    """Samples the resident memory of a process and its descendants; `peak_mib` is the largest total and
    `peak_jvm_mib` the largest of its Java processes (in local mode, Spark's driver JVM)."""

    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        self.pid, self.interval_s, self.peak_mib, self.peak_jvm_mib = pid, interval_s, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                processes = [root, *root.children(recursive=True)]
                sizes = {p: p.memory_info().rss / 2**20 for p in processes if p.is_running()}
                self.peak_mib = max(self.peak_mib, sum(sizes.values()))
                jvm = [size for p, size in sizes.items() if p.name() == "java"]
                self.peak_jvm_mib = max([self.peak_jvm_mib, *jvm])
            except psutil.Error:
                pass
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def peak_rss_mib(pid: int) -> float:
    """The kernel's high-water mark of a process's resident memory (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def lambdaflow(
    args: list[str], env: dict[str, str], log: Path | None = None, **kwargs: object
) -> subprocess.Popen:
    """Start a lambdaflow command. Its output is piped, or with `log` appended to that file: a long-running
    process whose pipe nobody reads blocks once it has written the pipe's 64 KiB."""
    command = [str(ROOT / ".venv" / "bin" / "python"), "-m", "cli", *args]
    if log is None:
        return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, **kwargs)  # fmt: skip
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as file:  # the child has its own copy of the descriptor
        return subprocess.Popen(command, env=env, cwd=ROOT, stdout=file, stderr=subprocess.STDOUT,
                                text=True, **kwargs)  # fmt: skip


def log_tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def report(results: list[Result]) -> Path:
    machine = hardware()
    print(f"\nhardware: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
          f"Python {machine['python']}, load {machine['load_average_at_start']}")  # fmt: skip
    header = (f"{'benchmark':<44} {'median':>12} {'unit':<10} {'runs':<28} {'floor':>10} {'ratio':>6} "
              f"{'target':<22} ok")  # fmt: skip
    print(header)
    print("-" * len(header))

    def figure(value: float) -> str:
        return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"

    for result in results:
        runs = ", ".join(figure(run) for run in result.runs)
        floor = figure(result.floor) if result.floor is not None else ""
        ratio = f"{result.ratio:.2f}" if result.ratio is not None else ""
        verdict = {True: "yes", False: "NO", None: ""}[result.meets_target]
        median = figure(result.median)
        print(f"{result.name:<44} {median:>12} {result.unit:<10} {runs:<28} {floor:>10} {ratio:>6} "
              f"{result.target:<22} {verdict}")  # fmt: skip
        for key, value in result.notes.items():
            print(f"{'':<4}{key}: {value}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"bench-{stamp}.json"
    payload = {
        "at": stamp,
        "hardware": machine,
        "results": [{**asdict(r), "median": r.median, "floor": r.floor, "ratio": r.ratio} for r in results],
    }
    path.write_text(json.dumps(payload, indent=2))
    print(f"\nwritten {path.relative_to(ROOT)}")
    return path


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def run_with_broker(selected: set[str], benchmarks: dict[str, Callable[..., list[Result]]]) -> list[Result]:
    """Run the selected benchmarks (all when none is) against one embedded broker in a scratch directory."""
    import tempfile

    from lambdaflow.broker import EmbeddedBroker, free_port

    results: list[Result] = []
    with (
        tempfile.TemporaryDirectory(prefix="lambdaflow-bench-") as temporary,
        # memory storage: these benchmarks measure the pipeline, not the broker's storage (see `broker`)
        EmbeddedBroker("127.0.0.1", free_port(), storage="memory") as broker,
    ):
        for name, benchmark in benchmarks.items():
            if not selected or name in selected:
                results += benchmark(broker, Path(temporary))
    return results
