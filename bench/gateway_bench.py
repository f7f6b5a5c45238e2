"""
Measure the gateway side by side with nginx and with Twisted's stock
C{ReverseProxyResource}, in front of the same instance, with the same client.

Run it by hand from the checkout, with the Python that has xsoar-lr
installed, never as part of the test suite::

    python bench/gateway_bench.py

It needs C{wrk} and C{nginx}; when they are missing and it runs as root, it
installs them with C{apt-get}, otherwise it says what to install. Everything
listens on 127.0.0.1 on free ports and is stopped at the end, also on Ctrl-C
or failure.

What runs, each in its own process:

- the instance: a C{twisted.web} C{Site} serving C{/small} (a fixed 64-byte
  answer) and C{/list} (a 1 MiB indicator list), built the way the host's
  C{xsoar_lr.child} builds an instance's site;
- the gateway: the site of C{xsoar_lr.gateway} over TLS, built the way
  C{xsoar_lr.service.GatewayService} builds it (same agent, routes, site and
  TLS options), routing C{/instance/execute/bench} to the instance;
- nginx: a TLS reverse proxy with upstream keep-alive, configured from
  C{bench/nginx-gateway.conf.template}, with one worker like the gateway;
- stock: C{twisted.web.proxy.ReverseProxyResource} over TLS at the same path;
- the instance's site itself over TLS with no proxy: the most one Twisted TLS
  process does here, so the ceiling for any gateway written with Twisted;
- with C{--processes N}, also N gateway processes sharing one port through
  C{SO_REUSEPORT}, and nginx with N workers.

All TLS servers use one self-signed certificate from
L{xsoar_lr.tls.ensure_self_signed}. C{wrk} (one thread, keep-alive) loads each
in turn with the same settings; runs are interleaved so that every ratio to
nginx compares figures taken within a few seconds of each other. A second
table gives TLS handshakes per second: C{wrk} with C{Connection: close}, so
every request opens a new connection with a full handshake (no server here
resumes sessions). C{--profile} samples the gateway under load with py-spy
(or cProfile when py-spy cannot be had) and prints where its time goes.
"""

from __future__ import annotations

import argparse
import ctypes
import http.client
import json
import os
import platform
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

HERE = Path(__file__).resolve().parent
NGINX_TEMPLATE = HERE / "nginx-gateway.conf.template"

#: The instance's two answers: a small fixed one and a 1 MiB list.
SMALL_BODY = b"198.51.100.7\n203.0.113.0/24\nexample.net\n*.example.org\nbench-ok!\n"
LIST_SIZE = 1024 * 1024

#: Where the proxies publish the instance, as the host does.
ROUTE = "/instance/execute/bench"

#: wrk prints this line from the Lua "done" hook; figures in microseconds.
WRK_SCRIPT = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT %d %d %d %d %d %d %d %d %d %d\\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""

SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"]
)


class BenchError(Exception):
    """
    The benchmark cannot go on; the message says why and what to do.
    """


def list_body() -> bytes:
    """
    A 1 MiB list of addresses and networks, one per line, the same on every
    run.
    """
    lines = []
    size = 0
    n = 0
    while size < LIST_SIZE:
        line = f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}\n"
        if n % 7 == 0:
            line = f"172.{16 + (n >> 16) % 16}.{(n >> 8) & 255}.0/24\n"
        lines.append(line)
        size += len(line)
        n += 1
    return "".join(lines).encode()[: LIST_SIZE - 1] + b"\n"


# --------------------------------------------------------------------------
# The servers, run as child processes of this script (--serve ROLE).
# --------------------------------------------------------------------------


def _begin_logging(path: Path) -> None:
    # Like twistd: every event, the access log included, goes to a file.
    from twisted.logger import globalLogBeginner, textFileLogObserver

    # The file stays open for the life of the process.
    log_file = open(path, "a", encoding="utf-8")  # noqa: SIM115
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(log_file)],  # type: ignore[list-item]
        redirectStandardIO=False,
    )


def _announce(port: int) -> None:
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()


def _listening_socket(port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _listen_tls(reactor: Any, site: Any, tls_dir: Path, port: int, reuse: bool) -> int:
    """
    Serve C{site} over TLS on 127.0.0.1 with the gateway's own TLS options;
    with C{reuse}, on a socket with C{SO_REUSEPORT} so that several
    processes can serve one port.
    """
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from xsoar_lr.tls import ensure_self_signed, server_options

    pair, _ = ensure_self_signed(tls_dir)
    options: Any = server_options(pair)
    factory = TLSMemoryBIOFactory(options, False, site)
    sock = _listening_socket(port, reuse)
    listening = reactor.adoptStreamPort(sock.fileno(), socket.AF_INET, factory)
    sock.close()  # the reactor holds its own duplicate
    bound: int = listening.getHost().port
    return bound


def serve_instance(args: argparse.Namespace) -> None:
    """
    The instance: C{/small} and C{/list} over plain HTTP, one process;
    with C{--tls}, the same site over TLS, to show what a Twisted TLS server
    does with no proxying at all.
    """
    from twisted.internet import reactor as installed

    reactor: Any = installed
    from twisted.web.resource import Resource
    from twisted.web.server import Request, Site

    class Fixed(Resource):
        isLeaf = True

        def __init__(self, body: bytes) -> None:
            super().__init__()
            self.body = body

        def render_GET(self, request: Request) -> bytes:
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return self.body

    _begin_logging(args.log)
    root = Resource()
    root.putChild(b"small", Fixed(SMALL_BODY))
    root.putChild(b"list", Fixed(list_body()))
    # As xsoar_lr.child builds an instance's site.
    site = Site(root)
    site.noisy = False
    if args.tls:
        _announce(_listen_tls(reactor, site, args.tls_dir, 0, False))
    else:
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        _announce(port.getHost().port)
    reactor.run()


def serve_gateway(args: argparse.Namespace) -> None:
    """
    The project's gateway, built from C{xsoar_lr.gateway} as
    C{GatewayService} builds it, routing C{bench} to the instance.
    """
    from twisted.internet import reactor

    from xsoar_lr.config import DEFAULT_CONNECT_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT
    from xsoar_lr.gateway import RouteTable, build_routes, make_agent, make_gateway_site
    from xsoar_lr.supervisor import InstanceState

    _begin_logging(args.log)
    agent = make_agent(reactor, DEFAULT_CONNECT_TIMEOUT)
    table = RouteTable()
    states = {"bench": InstanceState.RUNNING}
    table.routes = build_routes(
        {"bench": ("127.0.0.1", args.upstream_port)},
        agent,
        reactor,
        # The host passes its supervisor's lookups, which are dict lookups too.
        state=lambda name: states.get(name, InstanceState.STOPPED),
        retry_after=lambda name: 1,
        response_timeout=DEFAULT_RESPONSE_TIMEOUT,
    )
    site = make_gateway_site(table)
    port = _listen_tls(reactor, site, args.tls_dir, args.port, args.reuse_port)
    _announce(port)
    _run_reactor(reactor, args.cprofile)


def serve_stock(args: argparse.Namespace) -> None:
    """
    Twisted's stock C{ReverseProxyResource} at the same route.
    """
    import warnings

    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from twisted.web.proxy import ReverseProxyResource

    _begin_logging(args.log)
    root = Resource()
    instance = Resource()
    execute = Resource()
    root.putChild(b"instance", instance)
    instance.putChild(b"execute", execute)
    execute.putChild(
        b"bench", ReverseProxyResource("127.0.0.1", args.upstream_port, b"")
    )
    port = _listen_tls(reactor, Site(root), args.tls_dir, args.port, False)
    _announce(port)
    _run_reactor(reactor, args.cprofile)


def _run_reactor(reactor: Any, cprofile: Path | None) -> None:
    if cprofile is None:
        reactor.run()
        return
    import cProfile

    profile = cProfile.Profile()
    profile.enable()
    try:
        reactor.run()
    finally:
        profile.disable()
        profile.dump_stats(str(cprofile))


SERVERS: dict[str, Callable[[argparse.Namespace], None]] = {
    "instance": serve_instance,
    "gateway": serve_gateway,
    "stock": serve_stock,
}


# --------------------------------------------------------------------------
# Child processes of the benchmark, and their cleanup.
# --------------------------------------------------------------------------


def _die_with_parent() -> None:
    # Linux only: the child gets SIGTERM when the benchmark dies, even by
    # SIGKILL, so that nothing outlives it. Elsewhere the finally-block in
    # main() is the only cleanup.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Processes:
    """
    Every process the benchmark starts, stopped together at the end.
    """

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(
        self, command: Sequence[str], log: Path, **kwargs: Any
    ) -> subprocess.Popen[bytes]:
        """
        Start C{command} in its own session (Ctrl-C reaches only the
        benchmark, which then stops it), standard error to C{log}.
        """
        with open(log, "ab") as err:
            process = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads here
                **kwargs,
            )
        self.running.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        """
        Stop one process: SIGTERM, then SIGKILL after C{grace} seconds.
        """
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(grace)
        if process.stdout is not None:
            process.stdout.close()
        if process in self.running:
            self.running.remove(process)

    def stop_all(self) -> None:
        """
        Stop every process still running, the last started first.
        """
        for process in reversed(list(self.running)):
            self.stop(process)


def _wait_ready(
    process: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 30.0
) -> int:
    # A server child prints "READY <port>" once it listens.
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or process.poll() is not None:
            raise BenchError(
                f"the {what} did not start within {timeout:.0f} s; see {log}:\n"
                + _tail(log)
            )
        readable, _, _ = select.select([process.stdout], [], [], min(remaining, 0.5))
        if readable:
            chunk = os.read(process.stdout.fileno(), 256)
            if not chunk:
                continue
            line += chunk
    words = line.split()
    if len(words) != 2 or words[0] != b"READY":
        raise BenchError(f"the {what} said {line!r} instead of READY <port>; see {log}")
    return int(words[1])


def _wait_listening(
    port: int,
    process: subprocess.Popen[bytes],
    what: str,
    log: Path,
    timeout: float = 30.0,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise BenchError(
                f"{what} exited with {process.returncode}; see {log}:\n" + _tail(log)
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{what} is not listening on port {port} after "
                    f"{timeout:.0f} s; see {log}"
                ) from None
            time.sleep(0.05)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pids: Sequence[int]) -> float:
    """
    User plus system CPU time so far of the given processes, in seconds.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def children_of(pid: int) -> list[int]:
    """
    The process ids whose parent is C{pid}.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


# --------------------------------------------------------------------------
# Tools: wrk and nginx (installed when missing and allowed), py-spy.
# --------------------------------------------------------------------------


def which(name: str) -> str | None:
    """
    The path of the program C{name}, also looking in the sbin folders.
    """
    return shutil.which(name, path=SEARCH_PATH)


def ensure_tools(install: bool) -> tuple[str, str]:
    """
    The paths of C{wrk} and C{nginx}, installing them with apt-get when they
    are missing, C{install} is set and we are root.

    :raises BenchError: when a tool is missing and cannot be installed.
    """
    missing = [name for name in ("wrk", "nginx") if which(name) is None]
    if missing and install and os.geteuid() == 0 and which("apt-get"):
        print(f"Installing {' '.join(missing)} with apt-get ...", file=sys.stderr)
        _apt_install(missing)
        missing = [name for name in ("wrk", "nginx") if which(name) is None]
    if missing:
        raise BenchError(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
            f"installed. Install {'it' if len(missing) == 1 else 'them'} first, "
            f"on Debian or Ubuntu with: sudo apt-get install -y {' '.join(missing)} "
            "(or run this script as root, which installs them), then run it again."
        )
    wrk, nginx = which("wrk"), which("nginx")
    assert wrk is not None and nginx is not None
    return wrk, nginx


def _apt_install(packages: list[str]) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Installing nginx must not start the system's nginx on port 80; the
    # Debian way to forbid service starts is a policy-rc.d that exits 101.
    policy = Path("/usr/sbin/policy-rc.d")
    placed_policy = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        placed_policy = True
    try:
        command = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
        if (
            subprocess.run(
                command, env=env, stdout=subprocess.DEVNULL, check=False
            ).returncode
            != 0
        ):
            # The package lists may be missing or stale; refresh once.
            subprocess.run(
                ["apt-get", "update"], env=env, stdout=subprocess.DEVNULL, check=False
            )
            if subprocess.run(
                command, env=env, stdout=subprocess.DEVNULL, check=False
            ).returncode:
                raise BenchError(
                    f"apt-get could not install {' '.join(packages)}; install "
                    "them by hand and run the benchmark again."
                )
    finally:
        if placed_policy:
            policy.unlink()


def find_py_spy(install: bool) -> str | None:
    """
    The py-spy program, installed from PyPI into this Python's environment
    when missing and C{install} is set; None when it cannot be had.
    """
    beside = Path(sys.executable).parent / "py-spy"
    for candidate in (str(beside), which("py-spy")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    if not install:
        return None
    print("Installing py-spy from PyPI for the profile ...", file=sys.stderr)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "py-spy"],
        stdout=subprocess.DEVNULL,
        check=False,
    )
    if done.returncode == 0 and os.access(beside, os.X_OK):
        return str(beside)
    return None


def _version(command: Sequence[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (done.stdout + done.stderr).decode(errors="replace").strip()
    return text.splitlines()[0] if text else "?"


def describe_machine(wrk: str, nginx: str) -> str:
    """
    One paragraph on what the figures were measured on.
    """
    import OpenSSL

    import twisted

    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} cores; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, Twisted {twisted.__version__}, "
        f"pyOpenSSL {OpenSSL.__version__} "
        f"({OpenSSL.SSL.OpenSSL_version(OpenSSL.SSL.OPENSSL_VERSION).decode()}); "
        f"{_version([nginx, '-v']).replace('nginx version: ', '')}; "
        f"{' '.join(_version([wrk, '-v']).split()[:2])}"
    )


# --------------------------------------------------------------------------
# The systems under test.
# --------------------------------------------------------------------------


@dataclass
class Target:
    """
    One way to reach the instance.

    :ivar key: short name.
    :ivar label: the name in the tables.
    :ivar base: the URL that C{/small} and C{/list} are appended to.
    :ivar pids: the processes that do its work (for CPU use).
    """

    key: str
    label: str
    base: str
    pids: list[int] = field(default_factory=list)


@dataclass
class Bench:
    """
    The running servers of one benchmark run.
    """

    work: Path
    processes: Processes
    wrk: str
    nginx: str
    tls_dir: Path
    certificate: Path
    instance: Target | None = None
    targets: list[Target] = field(default_factory=list)

    def server(
        self, role: str, what: str, *extra: str
    ) -> tuple[subprocess.Popen[bytes], int]:
        """
        Start this script as the server C{role}; return it and its port.
        """
        log = self.work / f"{what.replace(' ', '-')}.log"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve",
            role,
            "--log",
            str(log),
            "--tls-dir",
            str(self.tls_dir),
            *extra,
        ]
        process = self.processes.start(command, log, stdout=subprocess.PIPE)
        return process, _wait_ready(process, what, log)

    def start_instance(self) -> int:
        process, port = self.server("instance", "instance")
        self.instance = Target(
            "instance",
            "instance, direct (HTTP)",
            f"http://127.0.0.1:{port}",
            [process.pid],
        )
        return port

    def start_tls_site(self) -> Target:
        """
        The instance's site served over TLS by its own process: the most a
        single-process Twisted TLS server does here, with no proxying.
        """
        process, port = self.server("instance", "instance over TLS", "--tls")
        label = "twisted.web over TLS, no proxy (ceiling)"
        return Target("ceiling", label, f"https://127.0.0.1:{port}", [process.pid])

    def start_gateway(
        self,
        upstream: int,
        processes: int = 1,
        key: str = "gateway",
        cprofile: Path | None = None,
    ) -> Target:
        pids = []
        port = 0
        for n in range(processes):
            extra = ["--upstream-port", str(upstream), "--port", str(port)]
            if processes > 1:
                extra.append("--reuse-port")
            if cprofile is not None:
                extra += ["--cprofile", str(cprofile)]
            process, port = self.server("gateway", f"{key} {n + 1}", *extra)
            pids.append(process.pid)
        label = (
            "xsoar-lr gateway (TLS)"
            if processes == 1
            else f"xsoar-lr gateway x{processes}, SO_REUSEPORT (TLS)"
        )
        return Target(key, label, f"https://127.0.0.1:{port}{ROUTE}", pids)

    def start_stock(self, upstream: int) -> Target:
        process, port = self.server("stock", "stock", "--upstream-port", str(upstream))
        return Target(
            "stock",
            "stock ReverseProxyResource (TLS)",
            f"https://127.0.0.1:{port}{ROUTE}",
            [process.pid],
        )

    def start_nginx(
        self, upstream: int, workers: int = 1, key: str = "nginx"
    ) -> Target:
        prefix = self.work / key
        prefix.mkdir()
        port = free_port()
        conf = NGINX_TEMPLATE.read_text()
        user = ""
        if os.geteuid() == 0:
            # Workers would drop to "nobody", which cannot use the private
            # temporary folder; keep them as the current user.
            import pwd

            user = f"user {pwd.getpwuid(os.getuid()).pw_name};"
        for marker, value in {
            "@USER_DIRECTIVE@": user,
            "@WORKERS@": str(workers),
            "@PREFIX@": str(prefix),
            "@PORT@": str(port),
            "@REUSEPORT@": " reuseport" if workers > 1 else "",
            "@INSTANCE_PORT@": str(upstream),
            "@CERTIFICATE@": str(self.certificate),
            "@PRIVATE_KEY@": str(self.tls_dir / "gateway.key"),
        }.items():
            conf = conf.replace(marker, value)
        conf_path = prefix / "nginx.conf"
        conf_path.write_text(conf)
        log = prefix / "stderr.log"
        process = self.processes.start(
            [
                self.nginx,
                "-p",
                str(prefix),
                "-e",
                str(prefix / "error.log"),
                "-c",
                str(conf_path),
            ],
            log,
            stdout=subprocess.DEVNULL,
        )
        _wait_listening(port, process, "nginx", prefix / "error.log")
        deadline = time.monotonic() + 10
        while len(children_of(process.pid)) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        label = (
            "nginx, 1 worker (TLS)"
            if workers == 1
            else f"nginx, {workers} workers (TLS)"
        )
        return Target(
            key,
            label,
            f"https://127.0.0.1:{port}{ROUTE}",
            [process.pid, *children_of(process.pid)],
        )

    def stop(self, target: Target, grace: float = 5.0) -> None:
        """
        Stop the processes of C{target}.
        """
        for process in list(self.processes.running):
            if process.pid in target.pids:
                self.processes.stop(process, grace)

    def check(self, target: Target, path: str, expected: bytes) -> None:
        """
        One request through C{target}, which must answer exactly the
        instance's body; the TLS certificate is verified.
        """
        url = target.base + path
        scheme, _, rest = url.partition("://")
        hostport, _, rest = rest.partition("/")
        host, _, port = hostport.partition(":")
        connection: http.client.HTTPConnection
        if scheme == "https":
            context = ssl.create_default_context(cafile=str(self.certificate))
            connection = http.client.HTTPSConnection(
                host, int(port), timeout=10, context=context
            )
        else:
            connection = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            connection.request("GET", "/" + rest)
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as e:
            raise BenchError(f"{target.label} failed on GET {url}: {e}") from None
        finally:
            connection.close()
        if response.status != 200 or body != expected:
            raise BenchError(
                f"{target.label} answered GET {url} with {response.status} and "
                f"{len(body)} bytes instead of 200 and {len(expected)} bytes: "
                f"{body[:200]!r}"
            )


# --------------------------------------------------------------------------
# Running wrk.
# --------------------------------------------------------------------------


@dataclass
class Result:
    """
    The figures of one wrk run, and the CPU its targets used.
    """

    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    proxy_cpu: float = 0.0
    instance_cpu: float = 0.0

    @property
    def rps(self) -> float:
        """
        Requests per second.
        """
        return self.requests / self.seconds if self.seconds else 0.0


def run_wrk(
    wrk: str,
    script: Path,
    url: str,
    connections: int,
    seconds: int,
    processes: Processes,
    work: Path,
    headers: Sequence[str] = (),
) -> Result:
    """
    One wrk run: one thread, C{connections} connections, C{seconds} long.
    """
    command = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
    ]
    for header in headers:
        command += ["-H", header]
    command.append(url)
    log = work / "wrk.log"
    process = processes.start(command, log, stdout=subprocess.PIPE)
    try:
        output, _ = process.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        processes.stop(process)
        raise BenchError(
            f"wrk did not finish within {seconds + 30} s on {url}"
        ) from None
    processes.stop(process)
    for line in output.decode(errors="replace").splitlines():
        if line.startswith("BENCH_RESULT "):
            n = [int(word) for word in line.split()[1:]]
            return Result(
                requests=n[0],
                seconds=n[1] / 1e6,
                errors=sum(n[3:8]),
                p50_ms=n[8] / 1000,
                p99_ms=n[9] / 1000,
            )
    raise BenchError(
        f"wrk gave no result for {url} (exit {process.returncode}):\n"
        + output.decode(errors="replace")
        + _tail(log)
    )


def median_round(results: list[Result]) -> Result:
    """
    Of the rounds of one cell, the one with the median requests per second.
    """
    ordered = sorted(results, key=lambda result: result.rps)
    return ordered[(len(ordered) - 1) // 2]


def measure(
    bench: Bench,
    script: Path,
    target: Target,
    url: str,
    connections: int,
    seconds: int,
    warmup: int,
    headers: Sequence[str] = (),
) -> Result:
    """
    A warm-up run, then the measured run, with the CPU time the target's
    processes and the instance used during it.
    """
    if warmup:
        run_wrk(
            bench.wrk,
            script,
            url,
            connections,
            warmup,
            bench.processes,
            bench.work,
            headers,
        )
    assert bench.instance is not None
    own = [] if target is bench.instance else target.pids
    before = cpu_seconds(own), cpu_seconds(bench.instance.pids)
    result = run_wrk(
        bench.wrk,
        script,
        url,
        connections,
        seconds,
        bench.processes,
        bench.work,
        headers,
    )
    after = cpu_seconds(own), cpu_seconds(bench.instance.pids)
    result.proxy_cpu = (
        (after[0] - before[0]) / result.seconds if result.seconds else 0.0
    )
    result.instance_cpu = (
        (after[1] - before[1]) / result.seconds if result.seconds else 0.0
    )
    return result


# --------------------------------------------------------------------------
# Tables.
# --------------------------------------------------------------------------


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}" if reference else "-"


def format_table(
    title: str, rows: list[tuple[str, int, Target, Result]], reference_key: str
) -> str:
    """
    The results as a text table (also valid as a reStructuredText simple
    table), each with its ratio to the reference target of the same row
    group.
    """
    header = (
        "payload",
        "conns",
        "target",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "req/s / nginx",
        "p99 / nginx",
        "own CPU",
        "inst. CPU",
    )
    references = {
        (payload, conns): result
        for payload, conns, target, result in rows
        if target.key == reference_key
    }
    body = []
    for payload, conns, target, result in rows:
        reference = references.get((payload, conns))
        body.append(
            (
                payload,
                str(conns),
                target.label,
                f"{result.rps:.0f}",
                f"{result.p50_ms:.2f}",
                f"{result.p99_ms:.2f}",
                str(result.errors),
                _ratio(result.rps, reference.rps) if reference else "-",
                _ratio(result.p99_ms, reference.p99_ms) if reference else "-",
                "-"
                if not target.pids or target.key == "instance"
                else f"{result.proxy_cpu:.0%}",
                f"{result.instance_cpu:.0%}",
            )
        )
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    rule = "  ".join("=" * w for w in widths)

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i in (0, 2) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths))
        ).rstrip()

    lines = [title, "", rule, line(header), rule]
    previous = None
    for raw, row in zip(rows, body):
        if previous is not None and (raw[0], raw[1]) != previous:
            lines.append("")
        previous = (raw[0], raw[1])
        lines.append(line(row))
    lines.append(rule)
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Profiling the gateway.
# --------------------------------------------------------------------------


#: How samples are put in areas: the first rule that matches, tried on the
#: whole stack for the access log, then from the innermost frame outwards.
_AREAS = (
    ("TLS (pyOpenSSL, OpenSSL)", ("OpenSSL/", "twisted/internet/_sslverify")),
    (
        "socket send/recv (system calls)",
        ("untilConcludes", "_socket", "Connection.doRead (twisted/internet/tcp.py"),
    ),
    (
        "epoll wait and reactor loop",
        (
            "twisted/internet/epollreactor",
            "twisted/internet/base",
            "twisted/internet/posixbase",
            "twisted/python/log",
            "twisted/python/context",
        ),
    ),
    (
        "upstream client (Agent, pool, HTTP/1.1 client)",
        (
            "twisted/web/client",
            "twisted/web/_newclient",
            "twisted/internet/endpoints",
            "idna/",
            "attr/",
        ),
    ),
    (
        "HTTP server (parsing, request, response)",
        (
            "twisted/web/http.py",
            "twisted/web/server",
            "twisted/web/resource",
            "twisted/protocols/basic",
            "twisted/web/http_headers",
            "twisted/web/_abnf",
            "twisted/web/_responses",
        ),
    ),
    (
        "TLS protocol glue (twisted.protocols.tls)",
        ("twisted/protocols/tls", "twisted/protocols/policies"),
    ),
    ("gateway code (xsoar_lr.gateway)", ("xsoar_lr/",)),
    ("Deferreds", ("twisted/internet/defer",)),
    ("TCP transport", ("twisted/internet/tcp", "twisted/internet/abstract")),
    ("Python standard library", ("stdlib/",)),
)

#: The functions on the request path whose total time the summary shows.
_WATCHED = (
    "TLSMemoryBIOProtocol.dataReceived",
    "TLSMemoryBIOProtocol.write",
    "TLSMemoryBIOProtocol._flushSendBIO",
    "HTTPChannel.dataReceived",
    "Request.requestReceived",
    "InstanceProxyResource.render",
    "InstanceProxyResource.upstream_headers",
    "InstanceProxyResource.respond",
    "Agent.request",
    "HTTPConnectionPool.getConnection",
    "HTTP11ClientProtocol.request",
    "HTTP11ClientProtocol.dataReceived",
    "_BodyRelay.dataReceived",
    "_BodyRelay.connectionLost",
    "Request.write",
    "Request.finish",
    "HTTPFactory.log",
    "Deferred.addTimeout",
    "ReactorBase.runUntilCurrent",
)


def summarise_py_spy(raw: Path, top: int = 20) -> str:
    """
    Where a busy gateway's time goes, from py-spy's collapsed stacks: own
    time per function, time per area, and the total time of the functions
    on the request path, as shares of the samples in which it was busy.
    """
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short_frame(f) for f in stack.split(";")]
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
        areas[_area(frames)] += count
    if not samples:
        return "py-spy took no samples while the gateway was busy."

    def share(n: int) -> str:
        return f"{n / samples:6.1%}"

    out = [f"{samples} samples of the busy gateway process.", "", "Own time by area:"]
    rest = sum(n for name, n in areas.items() if n / samples < 0.005)
    out += [
        f"  {share(n)}  {name}"
        for name, n in areas.most_common()
        if n / samples >= 0.005
    ]
    if rest:
        out.append(f"  {share(rest)}  everything else")
    out += ["", "Own time by function:"]
    out += [f"  {share(n)}  {name}" for name, n in own.most_common(top)]
    out += ["", "Total time (the function and what it calls) on the request path:"]
    watched = [
        (n, name) for name, n in total.items() if name.split(" (")[0] in _WATCHED
    ]
    out += [f"  {share(n)}  {name}" for n, name in sorted(watched, reverse=True)]
    return "\n".join(out)


def _short_frame(frame: str) -> str:
    # "render (/venv/.../xsoar_lr/gateway.py:288)" becomes
    # "render (xsoar_lr/gateway.py)": one entry per function, not per line.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    if "/lib/python3" in where:
        where = "stdlib/" + where.rsplit("/", 1)[-1]
    return f"{name} ({where})" if where else name


def _area(frames: Sequence[str]) -> str:
    if any(
        "HTTPFactory.log (" in frame or "twisted/logger/" in frame for frame in frames
    ):
        return "access log (formatting and writing)"
    for frame in reversed(frames):
        for area, markers in _AREAS:
            if any(marker in frame for marker in markers):
                return area
    return "other: " + frames[-1]


def profile_gateway(
    bench: Bench,
    script: Path,
    upstream: int,
    payload: str,
    seconds: int,
    install: bool,
) -> str:
    """
    Sample a fresh gateway under load (wrk, 16 connections, on C{payload})
    and tell where its time goes: with py-spy, or with cProfile inside the
    gateway when py-spy cannot be had.
    """
    py_spy = find_py_spy(install)
    stats_path = bench.work / f"gateway-{payload}.pstats"
    target = bench.start_gateway(
        upstream,
        key=f"profiled-gateway-{payload}",
        cprofile=None if py_spy else stats_path,
    )
    url = f"{target.base}/{payload}"
    try:
        if py_spy is None:
            result = run_wrk(
                bench.wrk, script, url, 16, seconds, bench.processes, bench.work
            )
        else:
            run_wrk(bench.wrk, script, url, 16, 1, bench.processes, bench.work)
            raw = bench.work / f"py-spy-{payload}.txt"
            log = bench.work / "py-spy.log"
            # py-spy samples for `seconds` while wrk runs a second longer.
            command = [py_spy, "record", "--pid", str(target.pids[0])]
            command += ["--duration", str(seconds), "--rate", "250"]
            command += ["--format", "raw", "--output", str(raw), "--nonblocking"]
            sampler = bench.processes.start(command, log, stdout=subprocess.DEVNULL)
            result = run_wrk(
                bench.wrk, script, url, 16, seconds + 1, bench.processes, bench.work
            )
            try:
                sampler.wait(30)
            except subprocess.TimeoutExpired:
                pass
            bench.processes.stop(sampler)
    finally:
        # Stopping the gateway is also what makes cProfile write its file.
        bench.stop(target, grace=20)

    what = f"gateway under wrk -t1 -c16 on /{payload} ({result.rps:.0f} req/s"
    if py_spy is not None:
        if not raw.exists():
            return f"py-spy wrote no profile; see {log}:\n{_tail(log)}"
        header = f"py-spy, {seconds} s at 250 Hz, {what} while sampled)."
        return header + "\n" + summarise_py_spy(raw)

    import io
    import pstats

    if not stats_path.exists():
        return "cProfile wrote no statistics."
    text = io.StringIO()
    stats = pstats.Stats(str(stats_path), stream=text)
    stats.strip_dirs().sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(25)
    header = f"cProfile (py-spy unavailable), {seconds} s, {what}; cProfile slows it)."
    return header + "\n" + text.getvalue()


# --------------------------------------------------------------------------
# The whole run.
# --------------------------------------------------------------------------


def _parse_connections(text: str) -> list[int]:
    try:
        counts = [int(word) for word in text.split(",") if word.strip()]
    except ValueError:
        counts = []
    if not counts or any(n < 1 or n > 1000 for n in counts):
        raise argparse.ArgumentTypeError(
            "--connections takes comma-separated counts from 1 to 1000, such "
            f"as 1,16,64; got {text!r}"
        )
    return counts


def _bounded(option: str, low: int, high: int) -> Callable[[str], int]:
    # An integer option with its range in the error message.
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{option} takes a whole number from {low} to {high}; got {text!r}"
            )
        return value

    return parse


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """
    The command line of the benchmark (and of its server children).
    """
    parser = argparse.ArgumentParser(
        description="Compare the xsoar-lr gateway with nginx and with stock "
        "ReverseProxyResource, in front of one instance, on 127.0.0.1."
    )
    parser.add_argument(
        "--connections",
        type=_parse_connections,
        default=[1, 16, 64],
        help="wrk connection counts (default 1,16,64)",
    )
    parser.add_argument(
        "--duration",
        type=_bounded("--duration", 1, 60),
        default=4,
        metavar="SECONDS",
        help="seconds per measured run, 1 to 60 (default 4)",
    )
    parser.add_argument(
        "--warmup",
        type=_bounded("--warmup", 0, 10),
        default=1,
        metavar="SECONDS",
        help="seconds of warm-up before each run, 0 to 10 (default 1)",
    )
    parser.add_argument(
        "--rounds",
        type=_bounded("--rounds", 1, 10),
        default=1,
        metavar="N",
        help="run the whole matrix N times, interleaved, and report each "
        "cell's median round by req/s, against a busy machine (default 1)",
    )
    parser.add_argument(
        "--handshake-connections",
        type=_bounded("--handshake-connections", 1, 256),
        default=16,
        metavar="N",
        help="connections for the handshake table (default 16)",
    )
    parser.add_argument(
        "--processes",
        type=_bounded("--processes", 1, 8),
        default=1,
        metavar="N",
        help="also measure N gateway processes on one port (SO_REUSEPORT) "
        "against nginx with N workers (default 1: not measured)",
    )
    parser.add_argument(
        "--profile",
        type=_bounded("--profile", 0, 60),
        default=0,
        metavar="SECONDS",
        help="after the tables, profile the gateway under load for this many "
        "seconds per payload (py-spy, else cProfile); 0 (default) skips it",
    )
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="never install wrk, nginx or py-spy; fail with what to install instead",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary folder (logs, configuration, profile) and "
        "print its path",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="also write every figure to FILE as JSON",
    )
    # The server children.
    parser.add_argument("--serve", choices=sorted(SERVERS), help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tls-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--upstream-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tls", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cprofile", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _stop_on_signal(signum: int, frame: Any) -> NoReturn:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the benchmark and print its tables; the exit code is 0 when every
    run worked.
    """
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    if args.serve:
        SERVERS[args.serve](args)
        return 0

    try:
        import xsoar_lr.gateway  # noqa: F401
    except ImportError as e:
        print(
            f"gateway_bench: cannot import xsoar_lr ({e}). Run it with the Python of "
            "the environment where xsoar-lr is installed (pip install . in the "
            "checkout).",
            file=sys.stderr,
        )
        return 2

    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGHUP, _stop_on_signal)
    processes = Processes()
    work = Path(tempfile.mkdtemp(prefix="xsoar-lr-gateway-bench-"))
    try:
        return run(args, processes, work)
    except BenchError as e:
        print(f"gateway_bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gateway_bench: interrupted; stopping everything.", file=sys.stderr)
        return 130
    finally:
        processes.stop_all()
        if args.keep:
            print(f"Logs and configuration kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, processes: Processes, work: Path) -> int:
    """
    Start the servers, measure, print the tables.
    """
    from xsoar_lr.tls import ensure_self_signed

    wrk, nginx = ensure_tools(not args.no_install)
    tls_dir = work / "tls"
    pair, _ = ensure_self_signed(tls_dir)
    script = work / "report.lua"
    script.write_text(WRK_SCRIPT)
    bench = Bench(work, processes, wrk, nginx, tls_dir, pair.certificate_path)

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    progress(
        "Starting the instance, the gateway, nginx and stock ReverseProxyResource ..."
    )
    upstream = bench.start_instance()
    assert bench.instance is not None
    targets = [
        bench.instance,
        bench.start_gateway(upstream),
        bench.start_nginx(upstream),
        bench.start_stock(upstream),
        bench.start_tls_site(),
    ]
    if args.processes > 1:
        targets.append(
            bench.start_gateway(upstream, args.processes, key="gateway-multi")
        )
        targets.append(bench.start_nginx(upstream, args.processes, key="nginx-multi"))
    payloads = {"small": ("/small", SMALL_BODY), "list": ("/list", list_body())}
    for target in targets:
        for path, body in payloads.values():
            bench.check(target, path, body)

    machine = describe_machine(wrk, nginx)
    load_before = os.getloadavg()[0]
    keep_alive: dict[tuple[str, int, str], list[Result]] = {}
    handshakes: dict[tuple[str, int, str], list[Result]] = {}
    per_round = len(payloads) * len(args.connections) * len(targets) + len(targets)
    total = per_round * args.rounds
    done = 0
    for _ in range(args.rounds):
        for payload, (path, _) in payloads.items():
            for connections in args.connections:
                for target in targets:
                    done += 1
                    progress(
                        f"[{done}/{total}] {target.label}, {payload}, "
                        f"{connections} connection(s)"
                    )
                    result = measure(
                        bench,
                        script,
                        target,
                        target.base + path,
                        connections,
                        args.duration,
                        args.warmup,
                    )
                    keep_alive.setdefault(
                        (payload, connections, target.key), []
                    ).append(result)
        for target in targets:
            done += 1
            progress(f"[{done}/{total}] {target.label}, new connection per request")
            result = measure(
                bench,
                script,
                target,
                target.base + "/small",
                args.handshake_connections,
                args.duration,
                args.warmup,
                headers=["Connection: close"],
            )
            handshakes.setdefault(
                ("small", args.handshake_connections, target.key), []
            ).append(result)
    load_after = os.getloadavg()[0]
    by_key = {target.key: target for target in targets}
    rows = [(p, c, by_key[k], median_round(r)) for (p, c, k), r in keep_alive.items()]
    handshake_rows = [
        (p, c, by_key[k], median_round(r)) for (p, c, k), r in handshakes.items()
    ]

    settings = (
        f"wrk -t1, keep-alive, {args.duration} s per run after {args.warmup} s "
        "of warm-up, "
        f"median of {args.rounds} round(s); "
        f"small = {len(SMALL_BODY)} bytes, list = {LIST_SIZE} bytes; "
        "CPU = share of one core used by the target's own processes / by the "
        "instance during the run."
    )
    first = format_table(
        "Requests per second and latency, keep-alive (" + settings + ")", rows, "nginx"
    )
    second = format_table(
        "TLS handshakes per second: a new connection for every request (wrk with "
        '-H "Connection: close"; every server closes after its answer and wrk '
        "reconnects; no session resumption anywhere, so each is a full TLS 1.3 "
        "handshake with the same RSA-2048 certificate and P-256)",
        handshake_rows,
        "nginx",
    )
    print(f"Machine: {machine}")
    print(
        f"Load average (1 min) before and after: {load_before:.2f}, {load_after:.2f}\n"
    )
    print(first)
    print()
    print(second)
    sys.stdout.flush()

    failed = [
        f"{target.label} ({payload}, {conns})"
        for payload, conns, target, result in rows + handshake_rows
        if result.errors
    ]
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine,
                    "settings": settings,
                    "keep_alive": [_as_dict(r) for r in rows],
                    "handshakes": [_as_dict(r) for r in handshake_rows],
                },
                indent=1,
            )
        )

    if args.profile:
        for payload in payloads:
            progress(f"Profiling the gateway on /{payload} for {args.profile} s ...")
            profile = profile_gateway(
                bench, script, upstream, payload, args.profile, not args.no_install
            )
            print()
            print(profile)
    if failed:
        print(
            "\nRuns with errors (see wrk's error counts): " + "; ".join(failed),
            file=sys.stderr,
        )
        return 1
    return 0


def _as_dict(row: tuple[str, int, Target, Result]) -> dict[str, Any]:
    payload, connections, target, result = row
    return {
        "payload": payload,
        "connections": connections,
        "target": target.key,
        "label": target.label,
        "rps": round(result.rps, 1),
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "errors": result.errors,
        "requests": result.requests,
        "proxy_cpu": round(result.proxy_cpu, 3),
        "instance_cpu": round(result.instance_cpu, 3),
    }


if __name__ == "__main__":
    sys.exit(main())
