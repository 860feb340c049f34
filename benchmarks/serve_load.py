"""Load on a real ``memo-edge serve`` (loopback): latency and throughput by concurrency, with dynamic
batching on and off, and while an update job trains; the serving process's peak memory.

The package: a randomly initialised MEMO ResNet-32 with T = 10 tasks of 10 classes, written with
``package_model(..., int8=True)`` as ``export --int8`` writes it (speed does not depend on the
weights), 20 random exemplars per class, and a total budget with room for one more task (so an update
can run). The reference: ``memo_edge.runtime.bench.bench`` (what ``memo-edge bench`` runs: a fresh
process, the backend's ``logits`` on batches of 32) for the same backend and precision.

Each load window: C concurrent clients (httpx.AsyncClient, one event loop in this process, on the same
CPU as the server: their cost is part of what is measured) each send one 32x32x3 uint8 image per
request as an .npy body, back to back, for ``--seconds``; latency is per request, from send to
parsed answer. Batching on: ``--max-batch 32 --max-delay-ms 5`` (the defaults); off: ``--max-batch 1``.
During the update: ``POST /update?epochs=...`` with 10 new classes of random images (npz upload); the
windows run while the job's state is ``training`` (checked before and after each window).
Peak RSS: VmHWM of the serving process from /proc (its own, not the update child's).

    .venv/bin/python benchmarks/serve_load.py [--seconds 10] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from memo_edge.runtime.bench import bench

from _package import CIFAR, random_package  # noqa: E402
from _report import cpu_name, load_average, write_section  # noqa: E402  (benchmarks/ is on sys.path as a script)

TARGETS = {"ratio": 0.80, "rss_mb": 250.0}  # concurrency 32 with batching vs bench batch 32; serving RSS
PER_CLASS = 20


def build(out: Path, tasks: int) -> Path:
    """ResNet-32, ``tasks`` tasks of 10 classes, PER_CLASS exemplars a class, room for the updates' branches."""
    random_package(out, tasks, per_class=PER_CLASS, spare_branches=2, int8=True)
    return out


def npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# memo-edge serve as it would run with ONNX Runtime's default (spinning threads): the comparison row.
SPINNING = ("import memo_edge.serve.state as state; state.SERVICE_HINTS = {}; "
            "from memo_edge.cli import main; main(prog_name='memo-edge')")


class Server:
    def __init__(self, package: Path, log: Path, *options: str, spinning: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        start = ["-c", SPINNING] if spinning else ["-m", "memo_edge"]
        with open(log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, *start, "serve", str(package), "--port", str(self.port),
                                          "--backend", "ort-cpu", *options], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


class Connection:
    """One keep-alive HTTP/1.1 connection that sends the same prepared request again and again: a
    load generator needs little CPU of its own (httpx spends more per request than the server does
    here), so what is measured is the service."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
        self.reader, self.writer, self.request = reader, writer, request

    @classmethod
    async def open(cls, port: int, body: bytes) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\ncontent-type: application/x-npy\r\n"
                f"content-length: {len(body)}\r\n\r\n").encode()
        return cls(reader, writer, head + body)

    async def predict(self) -> tuple[int, bytes]:
        self.writer.write(self.request)
        status = int((await self.reader.readuntil(b"\r\n")).split()[1])
        length = 0
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its waited-for children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


async def load(port: int, concurrency: int, seconds: float, body: bytes, server_pid: int) -> dict[str, float]:
    latencies: list[float] = []
    failures = 0
    connections = [await Connection.open(port, body) for _ in range(concurrency)]

    async def one_client(conn: Connection) -> None:
        nonlocal failures
        while time.perf_counter() < stop_at:
            sent = time.perf_counter()
            status, answer = await conn.predict()
            if status == 200 and answer.startswith(b'{"version"'):
                latencies.append(time.perf_counter() - sent)
            else:
                failures += 1

    cpu_before = cpu_seconds(server_pid)
    start = time.perf_counter()
    stop_at = start + seconds
    await asyncio.gather(*(one_client(c) for c in connections))
    elapsed = time.perf_counter() - start
    server_cpu = cpu_seconds(server_pid) - cpu_before
    for c in connections:
        c.close()
    ms = np.array(latencies) * 1e3
    return {"concurrency": concurrency, "requests": len(latencies), "failures": failures,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "images_per_s": len(latencies) / elapsed, "server_cpu_ms": 1e3 * server_cpu / max(len(latencies), 1)}


def run(args: argparse.Namespace, work: Path) -> dict:
    package = build(work / f"pkg-T{args.tasks}", args.tasks)
    reference = bench(package, backends=["ort-cpu"], batches=[32], iterations=args.bench_iterations, warmup=5,
                      precision=args.precision)[0]
    body = npy(np.random.default_rng(1).integers(0, 256, (1, *CIFAR.shape), dtype=np.uint8))
    results: dict = {"bench": reference, "windows": []}
    batching = {"on": ["--max-batch", "32", "--max-delay-ms", "5"], "off": ["--max-batch", "1"]}
    for mode, spinning, clients in (("on", False, (1, 8, 32)), ("off", False, (1, 8, 32)), ("on", True, (32,))):
        server = Server(package, work / f"serve-{mode}-{spinning}.log", "--graph-precision", args.precision,
                        *batching[mode], spinning=spinning)
        try:
            asyncio.run(load(server.port, 4, 2.0, body, server.proc.pid))  # warm-up
            for c in clients:
                window = asyncio.run(load(server.port, c, args.seconds, body, server.proc.pid))
                results["windows"].append({"batching": mode, "spinning": spinning, "update": False, **window})
                print(results["windows"][-1], flush=True)
            if not spinning:
                results[f"rss_{mode}"] = server.peak_rss_mb()
        finally:
            server.stop()
    server = Server(package, work / "serve-update.log", "--graph-precision", args.precision)
    try:
        rng = np.random.default_rng(2)
        x = rng.integers(0, 256, (10 * args.update_images, *CIFAR.shape), dtype=np.uint8)
        y = np.repeat(np.arange(10), args.update_images)
        buf = io.BytesIO()
        np.savez(buf, x=x, y=y, class_names=np.array([f"new{k}" for k in range(10)]))
        # int8=false: random weights trained on random images give logits the int8 check (rightly) refuses.
        r = httpx.post(f"{server.url}/update?epochs={args.update_epochs}&batch_size=128&int8=false", content=buf.getvalue(),
                       headers={"content-type": "application/x-npz"}, timeout=300)
        if r.status_code != 202:
            raise SystemExit(f"POST /update: {r.status_code} {r.text}")
        job = r.json()["id"]
        started = time.monotonic()
        for c in (8, 32):
            before = httpx.get(f"{server.url}/jobs/{job}").json()["state"]
            window = asyncio.run(load(server.port, c, args.seconds, body, server.proc.pid))
            after = httpx.get(f"{server.url}/jobs/{job}").json()
            results["windows"].append({"batching": "on", "spinning": False, "update": f"{before} -> {after['state']}",
                                       **window})
            print(results["windows"][-1], flush=True)
        while (state := httpx.get(f"{server.url}/jobs/{job}").json())["state"] not in ("succeeded", "failed"):
            time.sleep(1)
        results["job"] = state | {"seconds": time.monotonic() - started}
        results["rss_update"] = server.peak_rss_mb()
    finally:
        server.stop()
    return results


def to_markdown(results: dict, args: argparse.Namespace) -> str:
    ref = results["bench"]
    best = next(w for w in results["windows"]
                if w["batching"] == "on" and not w["spinning"] and w["update"] is False and w["concurrency"] == 32)
    ratio = best["images_per_s"] / ref.images_per_s
    rss = max(results["rss_on"], results["rss_off"], results["rss_update"])
    job = results["job"]
    lines = [
        f"## Serving under load: `memo-edge serve` on the loopback, MEMO ResNet-32 at T = {args.tasks}",
        "",
        f"- when: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- where: {cpu_name()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
        f"1-minute load average {load_average()} at the end; clients, server and update share these CPUs",
        f"- what: random-weight T = {args.tasks} package ({10 * args.tasks} classes, `export --int8` layout), backend ort-cpu, precision "
        f"{ref.precision}; each request one 32x32x3 uint8 image (.npy body); {args.seconds:g} s per window; "
        f"batching on = `--max-batch 32 --max-delay-ms 5`, off = `--max-batch 1`; server CPU = user + system time "
        f"of the serving process (ONNX Runtime's threads included) per answered request, from /proc",
        f"- reference: `memo-edge bench --backend ort-cpu --batch 32` in-process throughput "
        f"{ref.images_per_s:.0f} images/s (p50 {ref.p50_ms:.1f} ms per batch of 32)",
        f"- command: `.venv/bin/python benchmarks/serve_load.py --seconds {args.seconds:g}"
        + (f" --tasks {args.tasks}" if args.tasks != 10 else "") + f" --write {args.write}`",
        "",
        "| batching | ORT threads | during update (job state before -> after) | clients | requests | failed | "
        "p50 ms | p99 ms | images/s | server CPU ms/request |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in results["windows"]:
        threads = "spinning (ORT default)" if w["spinning"] else "not spinning (the service's)"
        lines.append(f"| {w['batching']} | {threads} | {w['update'] or 'no'} | {w['concurrency']} | {w['requests']} | "
                     f"{w['failures']} | {w['p50_ms']:.1f} | {w['p99_ms']:.1f} | {w['images_per_s']:.0f} | "
                     f"{w['server_cpu_ms']:.2f} |")
    lines += [
        "",
        f"- update job (`POST /update?epochs={args.update_epochs}&batch_size=128&int8=false`, 10 new classes x "
        f"{args.update_images} random images): {job['state']} in {job['seconds']:.0f} s"
        + (f", committed version {job['version']}" if job["state"] == "succeeded" else f": {job['error']}"),
        f"- peak RSS of the serving process (VmHWM): {results['rss_on']:.0f} MiB batching on, {results['rss_off']:.0f} "
        f"MiB off, {results['rss_update']:.0f} MiB through the update (the training child is another process)",
        f"- target, throughput at 32 clients with batching >= {TARGETS['ratio']:.0%} of bench's batch-32: "
        f"{'met' if ratio >= TARGETS['ratio'] else 'NOT met'} ({ratio:.0%}: {best['images_per_s']:.0f} vs "
        f"{ref.images_per_s:.0f} images/s)",
        f"- target, serving RSS < {TARGETS['rss_mb']:.0f} MiB: {'met' if rss < TARGETS['rss_mb'] else 'NOT met'} "
        f"({rss:.0f} MiB)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load window")
    parser.add_argument("--tasks", type=int, default=10, help="tasks of 10 classes in the served package")
    parser.add_argument("--precision", default="auto", help="auto (int8 here), fp32 or int8")
    parser.add_argument("--bench-iterations", type=int, default=50)
    parser.add_argument("--update-epochs", type=int, default=2)
    parser.add_argument("--update-images", type=int, default=50, help="per new class")
    parser.add_argument("--write", type=Path, help="replace this script's section of that markdown file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args, Path(tmp))
    text = to_markdown(results, args)
    print(text)
    if args.write:
        write_section(args.write, "serve_load", text)


if __name__ == "__main__":
    main()
