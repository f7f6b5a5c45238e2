"""
Load test of the gateway with an instance killed in the middle (not part of
the test suite).

Starts ``twistd -n xsoar-lr`` on a temporary configuration with three echo
instances, holds concurrent clients against all three routes through the
gateway for a while, kills one instance's process with SIGKILL half-way
(the host restarts it), and checks that:

- every request got a proper answer: 2xx, or 502, 503 or 504 from the
  gateway for the killed instance (no connection errors, no other codes);
- the other instances kept answering 200;
- the gateway process's memory (VmRSS) after the load is near its level
  before it.

Run it from the project root::

    python bench/gateway_chaos.py --clients 50 --duration 30

It prints the figures and exits with status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ALLOWED = {502, 503, 504}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    """
    The resident set size of a process, in KiB.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument(
        "--warmup", type=float, default=8.0, help="seconds before the baseline"
    )
    parser.add_argument("--body", type=int, default=32 * 1024, help="POST body size")
    options = parser.parse_args()

    from xsoar_lr.status import read_status

    folder = Path(tempfile.mkdtemp(prefix="gateway-chaos-"))
    gateway_port = free_port()
    names = ["steady-a", "steady-b", "victim"]
    config = folder / "xsoar-lr.yaml"
    config.write_text(
        "state_dir: state\n"
        "gateway:\n"
        f'  listen: "ssl:{gateway_port}:interface=127.0.0.1"\n'
        "  connect_timeout: 2\n"
        "  response_timeout: 5\n"
        "  auth_failure_limit: 0\n"
        "server_params: {instance.execute.external: true}\n"
        "instances:\n"
        + "".join(
            f"  - {{name: {n}, integration: echo, port: {free_port()}}}\n"
            for n in names
        )
    )
    twistd = Path(sys.executable).with_name("twistd")
    log = open(folder / "twistd.log", "wb")
    process = subprocess.Popen(
        [str(twistd), "-n", "--pidfile=", "xsoar-lr", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=folder,
    )
    state = folder / "state"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise SystemExit(f"twistd exited; see {folder / 'twistd.log'}")
            status = {s["name"]: s for s in read_status(state)}
            if len(status) == 3 and all(
                s["state"] == "running" for s in status.values()
            ):
                break
            if time.monotonic() > deadline:
                raise SystemExit("the instances did not start within 60 s")
            time.sleep(0.2)
        return run_load(options, process.pid, gateway_port, state, names)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def run_load(
    options: argparse.Namespace, pid: int, port: int, state: Path, names: list[str]
) -> int:
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, ensureDeferred
    from twisted.internet.task import deferLater

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from gateway_support import tls_client

    from xsoar_lr.status import read_status

    client = tls_client(state / "tls" / "gateway.pem", persistent=True)
    client._agent._pool.maxPersistentPerHost = options.clients  # type: ignore[attr-defined]
    base = f"https://127.0.0.1:{port}/instance/execute/"
    body = os.urandom(options.body)
    codes: dict[str, collections.Counter[Any]] = {
        n: collections.Counter() for n in names
    }
    latencies: list[float] = []
    phase = {"stop": False, "record": False}
    samples: list[tuple[float, int]] = []
    figures: dict[str, Any] = {}

    async def one_client(index: int) -> None:
        n = 0
        while not phase["stop"]:
            name = names[(index + n) % len(names)]
            n += 1
            started = time.monotonic()
            try:
                if n % 2:
                    response = await client.get(base + name + "/x?i=%d" % n)
                else:
                    response = await client.post(base + name + "/upload", data=body)
                await response.content()
                outcome: Any = response.code
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                outcome = type(e).__name__
            if phase["record"]:
                codes[name][outcome] += 1
                latencies.append(time.monotonic() - started)

    async def sampler() -> None:
        while not phase["stop"]:
            samples.append((time.monotonic(), rss_kib(pid)))
            await deferLater(reactor, 0.25, lambda: None)

    async def scenario() -> None:
        figures["rss_start"] = rss_kib(pid)
        clients = [ensureDeferred(one_client(i)) for i in range(options.clients)]
        sampling = ensureDeferred(sampler())
        await deferLater(reactor, options.warmup, lambda: None)
        figures["rss_baseline"] = rss_kib(pid)
        phase["record"] = True
        started = time.monotonic()
        await deferLater(reactor, options.duration / 2, lambda: None)
        victim = {s["name"]: s for s in read_status(state)}["victim"]
        os.kill(victim["pid"], signal.SIGKILL)
        figures["killed_at"] = time.monotonic() - started
        while True:
            status = {s["name"]: s for s in read_status(state)}["victim"]
            if status["state"] == "running" and status["pid"] != victim["pid"]:
                break
            await deferLater(reactor, 0.1, lambda: None)
        figures["restarted_after"] = time.monotonic() - started - figures["killed_at"]
        remaining = options.duration - (time.monotonic() - started)
        await deferLater(reactor, max(0.0, remaining), lambda: None)
        phase["stop"] = True
        for d in clients:
            await d
        await sampling
        figures["elapsed"] = time.monotonic() - started
        await client._agent._pool.closeCachedConnections()  # type: ignore[attr-defined]
        # Let the gateway close its side and collect what it freed.
        await deferLater(reactor, 3.0, lambda: None)
        figures["rss_after"] = rss_kib(pid)

    done: Deferred[None] = ensureDeferred(scenario())
    failures: list[Any] = []
    done.addErrback(failures.append)
    done.addBoth(lambda _: reactor.stop())
    reactor.run()
    if failures:
        failures[0].printTraceback()
        return 1

    total = sum(sum(c.values()) for c in codes.values())
    latencies.sort()
    peak = max(r for _, r in samples)
    print(
        f"clients {options.clients}, load {figures['elapsed']:.1f} s, "
        f"{total} requests ({total / figures['elapsed']:.0f}/s), "
        f"POST body {options.body} bytes"
    )
    print(
        f"latency p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms"
    )
    print(
        f"victim killed at {figures['killed_at']:.1f} s, running again "
        f"{figures['restarted_after']:.2f} s later"
    )
    for name, counter in codes.items():
        print(f"  {name}: {dict(sorted(counter.items(), key=str))}")
    print(
        f"gateway RSS: start {figures['rss_start']} KiB, baseline after warm-up "
        f"{figures['rss_baseline']} KiB, peak {peak} KiB, after "
        f"{figures['rss_after']} KiB"
    )

    problems = []
    for name, counter in codes.items():
        for outcome, count in counter.items():
            ok = isinstance(outcome, int) and (
                200 <= outcome < 300 or (name == "victim" and outcome in ALLOWED)
            )
            if not ok:
                problems.append(f"{name}: {count} x {outcome}")
    if figures["rss_after"] > figures["rss_baseline"] * 1.25 + 8 * 1024:
        problems.append("the gateway's memory did not return near its baseline")
    for problem in problems:
        print("FAIL:", problem)
    print("OK" if not problems else "FAILED")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
