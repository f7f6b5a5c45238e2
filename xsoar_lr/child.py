"""
The program that runs one instance, started by the host's supervisor as
C{python -m xsoar_lr.child}.

The host writes the instance's settings as one line of JSON on the child's
standard input and keeps the pipe open; the child stops when it closes, so
no instance outlives a host that died. Once the instance is listening, the
child writes C{ready} on file descriptor 3.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.protocol import Protocol
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
)
from twisted.python.failure import Failure

from xsoar_lr.logs import JSONLinesObserver
from xsoar_lr.supervisor import CONTROL_FD, EXIT_BAD_CONFIGURATION, EXIT_CANNOT_LISTEN

log = Logger(namespace="xsoar_lr.child")


def read_payload(fd: int = 0) -> dict[str, Any]:
    """
    Read the first line of C{fd}, unbuffered so that nothing after it is
    taken from the pipe.
    """
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    payload: dict[str, Any] = json.loads(data)
    return payload


class _HostPipe(Protocol):
    """
    Stops the instance when the host closes its end of standard input.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.reactor.running:
            self.reactor.stop()


def channel_factory(max_header_bytes: int) -> Callable[[], Any]:
    """
    The protocol factory of an instance's site, accepting request lines and
    headers up to C{max_header_bytes}. The gateway adds C{X-Request-URI} and
    C{X-Forwarded-*} to what its client sent, so an instance must accept
    more than the gateway does, or a long URL accepted by the gateway would
    be refused by the instance.
    """
    from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol

    class InstanceChannel(HTTPChannel):
        totalHeadersSize = max_header_bytes
        MAX_LENGTH = max_header_bytes

    def build() -> Any:
        return _GenericHTTPChannelProtocol(InstanceChannel())

    return build


def open_store(path: Path) -> Any:
    """
    Open the host's indicator store; imported late, since most instances
    never touch it.
    """
    from xsoar_lr.store import IndicatorStore

    return IndicatorStore.open(path)


def run(payload: dict[str, Any]) -> int:
    """
    Serve the instance described by C{payload} until told to stop.

    :returns: the process exit code.
    """
    from twisted.internet import reactor as _reactor
    from twisted.internet.endpoints import (
        SSL4ServerEndpoint,
        TCP4ServerEndpoint,
        TCP6ServerEndpoint,
    )
    from twisted.internet.stdio import StandardIO
    from twisted.web.server import Site

    from xsoar_lr.api import InstanceContext, ParameterError, find_integrations
    from xsoar_lr.status import read_status

    reactor: Any = _reactor
    name = payload["name"]
    exit_code = [0]

    integration = find_integrations().get(payload["integration"])
    if integration is None:
        log.critical(
            "Instance {instance}: integration {integration!r} is not installed",
            instance=name,
            integration=payload["integration"],
        )
        return EXIT_BAD_CONFIGURATION
    try:
        params = integration.validate(payload["params"])
    except ParameterError as e:
        log.critical("Instance {instance}: {problems}", instance=name, problems=str(e))
        return EXIT_BAD_CONFIGURATION

    state_dir = Path(payload["state_dir"])
    state_dir.mkdir(parents=True, exist_ok=True)
    store_path = Path(payload["store_path"])
    control = StandardIO(  # type: ignore[call-arg]
        _HostPipe(reactor), stdin=0, stdout=CONTROL_FD, reactor=reactor
    )

    def report_health(problem: str | None) -> None:
        line = b"health " + json.dumps(problem).encode() + b"\n"
        reactor.callFromThread(control.write, line)

    context = InstanceContext(
        name=name,
        integration=payload["integration"],
        params=params,
        state_dir=state_dir,
        route=payload.get("route"),
        reactor=reactor,
        log=Logger(namespace=f"xsoar_lr.instance.{name}"),
        open_store=lambda: open_store(store_path),
        report_health=report_health,
        host_status=lambda: read_status(Path(payload["host_state_dir"])),
    )
    site = Site(integration.make_resource(context))
    site.noisy = False
    site.protocol = channel_factory(  # type: ignore[method-assign]
        payload.get("max_header_bytes", 65536)
    )
    access_log = payload.get("access_log")
    if access_log:
        from xsoar_lr.accesslog import log_access_to

        log_access_to(
            site,
            Path(access_log["path"]),
            access_log["max_bytes"],
            access_log["keep"],
        )
    service = integration.make_service(context)

    interface = payload["interface"]
    port = payload["port"]
    if payload.get("certificate"):
        from xsoar_lr.tls import load_pem_pair, server_options

        pair = load_pem_pair(Path(payload["certificate"]), Path(payload["private_key"]))
        endpoint: Any = SSL4ServerEndpoint(
            reactor, port, server_options(pair), interface=interface
        )
    elif ":" in interface:
        endpoint = TCP6ServerEndpoint(reactor, port, interface=interface)
    else:
        endpoint = TCP4ServerEndpoint(reactor, port, interface=interface)

    def listening(listening_port: Any) -> None:
        if service is not None:
            service.startService()
            reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
        control.write(b"ready\n")

    def cannot_listen(failure: Failure) -> None:
        log.critical(
            "Instance {instance} cannot listen on {interface}:{port}: {reason}",
            instance=name,
            interface=interface,
            port=port,
            reason=failure.getErrorMessage(),
        )
        exit_code[0] = EXIT_CANNOT_LISTEN
        reactor.stop()

    reactor.callWhenRunning(
        lambda: endpoint.listen(site).addCallbacks(listening, cannot_listen)
    )
    reactor.run()
    return exit_code[0]


def main() -> None:
    """
    Entry point of the child process.
    """
    # Events go to the host as JSON lines, which it logs again as the
    # instance's, with their level and fields; debug events stay here.
    observer = FilteringLogObserver(
        JSONLinesObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)],
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    try:
        payload = read_payload()
    except ValueError:
        log.critical("The instance's settings on standard input are not valid JSON")
        sys.exit(EXIT_BAD_CONFIGURATION)
    sys.exit(run(payload))


if __name__ == "__main__":
    main()
