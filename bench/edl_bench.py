"""
Benchmark of the EDL integration: build and serve lists of 100,000 and
1,000,000 indicators from a real indicator store.

For each size and scenario (PAN-OS text, PAN-OS text collapsed to CIDRs, JSON)
a fresh instance process is started on 127.0.0.1, and this script measures:

- build time (the list's C{X-EDL-Query-Time-Secs});
- time to first byte and full download time of the first request (which
  builds the list);
- the same for a cached repeat (median of several);
- a C{304} revalidation with C{If-None-Match};
- the peak resident memory of the instance process (C{VmHWM}).

If nginx is installed, the same bytes are also served by nginx as a static
file and downloaded the same way, for comparison; otherwise that column is
skipped with a note.

Run: C{python bench/edl_bench.py [--sizes 100000,1000000] [--work DIR]}.
This is not part of the test suite.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCENARIOS: dict[str, dict[str, Any]] = {
    "text": {"format": "PAN-OS (text)"},
    "text-collapsed": {"format": "PAN-OS (text)", "collapse_ips": "To CIDRS"},
    "json": {"format": "JSON"},
}
REPEATS = 15


# -- the indicators ----------------------------------------------------------


def synthetic_indicators(count: int) -> Iterator[Any]:
    """
    A deterministic mix: 50% IPv4 addresses, 10% CIDRs, 25% domains, 15% URLs.
    """
    from xsoar_lr.indicators import Indicator, IndicatorType

    for i in range(count):
        kind = i % 20
        a, b, c = (i >> 16) & 255, (i >> 8) & 255, i & 255
        if kind < 10:
            yield Indicator(f"10.{a}.{b}.{c}", IndicatorType.IP)
        elif kind < 12:
            # Distinct /28 networks inside 100.64.0.0/10.
            network = (100 << 24 | 64 << 16) + ((i // 20 * 2 + kind - 10) << 4)
            octets = ".".join(str(network >> s & 255) for s in (24, 16, 8, 0))
            yield Indicator(f"{octets}/28", IndicatorType.CIDR)
        elif kind < 17:
            yield Indicator(f"host{i}.example{a}.com", IndicatorType.DOMAIN)
        else:
            yield Indicator(
                f"https://site{i}.example{b}.net:8443/path/{c}?q={i}", IndicatorType.URL
            )


def fill_store(state_dir: Path, count: int) -> float:
    """
    Create the store of C{state_dir} with C{count} indicators; returns the
    seconds it took.
    """
    from xsoar_lr.store import IndicatorStore, store_path

    started = time.monotonic()
    with IndicatorStore.open(store_path(state_dir)) as store:
        if store.count() != count:
            store.replace_source("bench", synthetic_indicators(count))
    return time.monotonic() - started


# -- the instance process ------------------------------------------------------


def serve(state_dir: Path, params_json: str) -> None:
    """
    Run one EDL instance (the child process): print the port, serve until
    SIGTERM.
    """
    from twisted.internet import reactor as installed
    from twisted.logger import Logger
    from twisted.web.server import Site

    from integrations import edl
    from xsoar_lr.api import InstanceContext, validate_parameters
    from xsoar_lr.store import IndicatorStore, store_path

    reactor: Any = installed
    store = IndicatorStore.open(store_path(state_dir))
    params = validate_parameters(edl.PARAMETERS, json.loads(params_json))
    instance_dir = state_dir / "instance"
    instance_dir.mkdir(exist_ok=True)
    context = InstanceContext(
        name="bench",
        integration="edl",
        params=params,
        state_dir=instance_dir,
        route=None,
        reactor=reactor,
        log=Logger(namespace="bench"),
        open_store=lambda: store,
    )
    site = Site(edl.make_resource(context))
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()


def memory_mib(pid: int, field: str) -> float:
    """
    A memory figure of a process from C{/proc/PID/status}: C{VmHWM} is the
    peak resident set (which includes the store's memory-mapped database
    pages), C{RssAnon} the current anonymous (heap) memory.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- measuring ---------------------------------------------------------------


class HeapSampler:
    """
    Samples a process's anonymous memory every 10 ms in a thread and keeps
    the largest figure: the peak of the heap, which C{VmHWM} does not give
    apart from the memory-mapped database.
    """

    def __init__(self, pid: int) -> None:
        import threading

        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, memory_mib(self.pid, "RssAnon"))
            except OSError:
                return
            self._stop.wait(0.01)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def fetch(
    port: int, path: str = "/", headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """
    GET a path; return status, headers, size, time to first byte and total.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    first = None
    size = 0
    while True:
        piece = response.read(1 << 20)
        if first is None:
            first = time.perf_counter()
        if not piece:
            break
        size += len(piece)
    finished = time.perf_counter()
    connection.close()
    return {
        "status": response.status,
        "headers": {k.lower(): v for k, v in response.getheaders()},
        "size": size,
        "ttfb": (first or finished) - started,
        "total": finished - started,
    }


def median_download(
    port: int, path: str = "/", headers: dict[str, str] | None = None
) -> float:
    return statistics.median(
        fetch(port, path, headers)["total"] for _ in range(REPEATS)
    )


def nginx_download(body: bytes, work: Path) -> float | None:
    """
    Serve C{body} as a static file with nginx and return the median full
    download time, or C{None} when nginx is not installed.
    """
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if binary is None:
        return None
    root = work / "nginx"
    shutil.rmtree(root, ignore_errors=True)
    (root / "html").mkdir(parents=True)
    (root / "html" / "list.txt").write_bytes(body)
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (root / "nginx.conf").write_text(
        f"""
daemon off;
worker_processes 1;
error_log {root}/error.log;
pid {root}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    server {{
        listen 127.0.0.1:{port};
        root {root}/html;
    }}
}}
"""
    )
    process = subprocess.Popen(
        [binary, "-c", str(root / "nginx.conf"), "-p", str(root)]
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                fetch(port, "/list.txt")
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(
                        "nginx did not start; see " + str(root / "error.log")
                    )
                time.sleep(0.05)
        return median_download(port, "/list.txt")
    finally:
        process.terminate()
        process.wait(10)


def run_scenario(
    state_dir: Path, scenario: str, size: int, work: Path
) -> dict[str, Any]:
    params = {"edl_size": size, **SCENARIOS[scenario]}
    shutil.rmtree(state_dir / "instance", ignore_errors=True)
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(state_dir), json.dumps(params)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        sampler = HeapSampler(process.pid)
        first = fetch(port)
        if first["status"] != 200:
            raise RuntimeError(f"{scenario}: status {first['status']}")
        repeat = median_download(port)
        revalidated = fetch(port, headers={"If-None-Match": first["headers"]["etag"]})
        assert revalidated["status"] == 304, revalidated["status"]
        result = {
            "size": size,
            "scenario": scenario,
            "entries": int(first["headers"]["x-edl-size"]),
            "bytes": first["size"],
            "build": float(first["headers"]["x-edl-query-time-secs"]),
            "first_ttfb": first["ttfb"],
            "first_total": first["total"],
            "cached_total": repeat,
            "revalidate": revalidated["total"],
            "peak_mib": memory_mib(process.pid, "VmHWM"),
            "heap_mib": sampler.stop(),
        }
        body_path = next((state_dir / "instance" / "lists").glob("list-*.body"))
        result["nginx_total"] = nginx_download(body_path.read_bytes(), work)
        return result
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def report(results: list[dict[str, Any]]) -> str:
    """
    The results as a reStructuredText table.
    """
    rows = [
        (
            "Indicators",
            "List",
            "Entries",
            "MB",
            "Build s",
            "First TTFB s",
            "First total s",
            "Cached s",
            "nginx s",
            "Cached/nginx",
            "304 ms",
            "Peak RSS MiB",
            "Peak heap MiB",
        )
    ]
    for r in results:
        nginx = r["nginx_total"]
        rows.append(
            (
                f"{r['size']:,}",
                r["scenario"],
                f"{r['entries']:,}",
                f"{r['bytes'] / 1e6:.1f}",
                f"{r['build']:.2f}",
                f"{r['first_ttfb']:.2f}",
                f"{r['first_total']:.2f}",
                f"{r['cached_total']:.3f}",
                "n/a" if nginx is None else f"{nginx:.3f}",
                "n/a" if nginx is None else f"{r['cached_total'] / nginx:.2f}",
                f"{r['revalidate'] * 1000:.1f}",
                f"{r['peak_mib']:.0f}",
                f"{r['heap_mib']:.0f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(c.ljust(w) for c, w in zip(rows[0], widths)), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows[1:]]
    lines.append(rule)
    if any(r["nginx_total"] is None for r in results):
        lines.append("")
        lines.append(
            "nginx is not installed, so the static-file comparison was skipped."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--work", default=None, help="folder for the stores (kept)")
    parser.add_argument(
        "--serve", nargs=2, metavar=("STATE_DIR", "PARAMS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.serve:
        serve(Path(args.serve[0]), args.serve[1])
        return 0
    work = Path(args.work or tempfile.mkdtemp(prefix="edl-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        state_dir = work / f"store-{size}"
        state_dir.mkdir(exist_ok=True)
        seconds = fill_store(state_dir, size)
        print(f"store of {size:,} indicators ready in {seconds:.1f} s", file=sys.stderr)
        for scenario in args.scenarios.split(","):
            result = run_scenario(state_dir, scenario, size, work)
            print(json.dumps(result), file=sys.stderr)
            results.append(result)
    print(report(results))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
