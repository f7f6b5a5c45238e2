"""
The C{twistd xsoar-lr} service: the instances, each in its own supervised
process, the gateway in front of the routed ones, and the feed pulls.

twistd finds this module through the lazy C{ServiceMaker} in
C{twisted/plugins/xsoar_lr_plugins.py}, which imports it only when the
command runs, after twistd has installed the reactor of the user's choice.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import attrs
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString, wrapServerTLS
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure

from xsoar_lr.accesslog import log_access_to
from xsoar_lr.config import (
    EMBEDDED,
    Config,
    ConfigError,
    InstanceConfig,
    load_config,
    route_for,
    split_description,
)
from xsoar_lr.gateway import (
    GatewayPolicy,
    GatewaySite,
    RouteTable,
    build_routes,
    make_agent,
    make_gateway_site,
)
from xsoar_lr.management import HostMetrics, make_management_site
from xsoar_lr.status import StateDirInUse, lock_state_dir, write_status
from xsoar_lr.supervisor import InstanceSupervisor, ProcessSpec
from xsoar_lr.tls import PemPair, ReloadingServerTLS, ensure_self_signed, load_pem_pair

__all__ = ["GatewayService", "HostService", "Options", "ReloadPlan", "makeService"]


class Options(usage.Options):
    """
    Options of C{twistd xsoar-lr}.
    """

    synopsis = "[--config FILE]"
    longdesc = (
        "Run every instance of the configuration in its own process and serve "
        "the routed ones through the TLS gateway at /instance/execute/<name>. "
        "Without --config, the embedded default configuration runs: an EDL "
        "instance on port 7000 behind the gateway on https://localhost:8443."
    )
    optParameters = [
        [
            "config",
            "c",
            None,
            "The YAML configuration file (default: the embedded configuration).",
        ],
    ]


def makeService(options: Options) -> IService:
    """
    Build the host from the configuration the options name; a configuration
    with problems is reported on standard error and twistd exits with 1.
    """
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    try:
        config = load_config(options["config"])
    except ConfigError as e:
        sys.stderr.write(e.report() + "\n")
        raise SystemExit(1) from None
    try:
        state_lock = lock_state_dir(config.state_dir)
    except StateDirInUse as e:
        sys.stderr.write(f"xsoar-lr: {e}\n")
        raise SystemExit(1) from None
    service = HostService(config, reactor, state_lock=state_lock)
    signal.signal(
        signal.SIGHUP,
        lambda signum, frame: reactor.callFromThread(service.reload),
    )
    return service


def instance_payload(config: Config, instance: InstanceConfig) -> dict[str, Any]:
    """
    What the child process of C{instance} is told about itself.
    """
    return {
        "name": instance.name,
        "integration": instance.integration,
        "port": instance.port,
        "interface": instance.interface,
        "certificate": None
        if instance.certificate is None
        else str(instance.certificate),
        "private_key": None
        if instance.private_key is None
        else str(instance.private_key),
        "params": dict(instance.params),
        "state_dir": str(config.instance_state_dir(instance.name)),
        "store_path": str(config.store_path),
        "host_state_dir": str(config.state_dir),
        "route": route_for(instance.name) if config.is_routed(instance.name) else None,
        # Room for what the gateway adds to a request it accepted.
        "max_header_bytes": 2 * config.gateway.max_header_bytes + 16384,
        "access_log": None
        if instance.access_log is None
        else {
            "path": str(instance.access_log.path),
            "max_bytes": instance.access_log.max_bytes,
            "keep": instance.access_log.keep,
        },
    }


def gateway_url(listen: str, port: int | None) -> str:
    """
    The gateway's base URL as a client on this machine would write it, for
    the routed URLs shown in logs and by C{xsoar-lr}.
    """
    host = public_host(listen)
    return f"https://{host}" + ("" if port in (None, 443) else f":{port}")


def public_host(listen: str) -> str:
    """
    The host name to show in the routed URLs.
    """
    _, _, keywords = split_description(listen)
    interface = keywords.get("interface", "")
    if interface in ("127.0.0.1", "::1", "localhost"):
        return "localhost"
    if interface and interface not in ("0.0.0.0", "::"):
        return f"[{interface}]" if ":" in interface else interface
    return socket.getfqdn() or "localhost"


class _ListeningService(Service):
    """
    A service that listens on one endpoint from C{privilegedStartService}
    on, so that a low port is bound before twistd sheds privileges.

    :ivar listening_port: the port, once listening.
    """

    def __init__(self) -> None:
        self.listening_port: Any = None

    def listen_now(self, endpoint: Any, factory: Any) -> None:
        """
        Listen on C{endpoint}. Stream ports listen (or fail) at once; a
        failure is raised here, so that twistd reports it and exits rather
        than run without the site.
        """
        results: list[Any] = []
        endpoint.listen(factory).addBoth(results.append)
        if results and isinstance(results[0], Failure):
            results[0].raiseException()
        self.listening_port = results[0] if results else None

    @property
    def port(self) -> int | None:
        """
        The TCP port listened on, once listening.
        """
        if self.listening_port is None:
            return None
        port: int | None = getattr(self.listening_port.getHost(), "port", None)
        return port

    def stop_listening(self) -> Deferred[None]:
        """
        Close the listening socket; connections already open go on.
        """
        if self.listening_port is None:
            return succeed(None)
        port, self.listening_port = self.listening_port, None
        d: Deferred[None] = maybeDeferred(port.stopListening)
        return d


class GatewayService(_ListeningService):
    """
    The gateway's TLS site, listening from C{privilegedStartService} on so
    that a low port is bound before twistd sheds privileges.

    The certificate and key are read again when the configuration is
    reloaded (C{SIGHUP}, see L{apply}) and when the files change (checked
    every L{tls_check_interval} seconds); new connections get the new
    certificate, open ones keep theirs.

    :ivar table: the routes being served.
    :ivar listening_port: the port, once listening.
    :ivar tls: the gateway's TLS, once listening.
    """

    log = Logger()

    #: Seconds between checks of the certificate files for changes.
    tls_check_interval: float = 5.0

    def __init__(
        self, config: Config, reactor: Any, supervisor: InstanceSupervisor
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.supervisor = supervisor
        self.agent = make_agent(reactor, config.gateway.connect_timeout)
        self.policy = GatewayPolicy.from_config(config.gateway, reactor)
        self.table = RouteTable()
        self.site: GatewaySite | None = None
        self.metrics: HostMetrics | None = None
        self.tls: ReloadingServerTLS | None = None
        self._tls_check: LoopingCall | None = None
        self.set_routes(config)

    def set_routes(self, config: Config) -> None:
        """
        Serve the routes of C{config} from the next request on.
        """
        self.table.routes = build_routes(
            {i.name: (i.interface, i.port) for i in config.routed_instances},
            self.agent,
            self.reactor,
            state=self.supervisor.state,
            retry_after=self.supervisor.retry_after,
            response_timeout=config.gateway.response_timeout,
            settings={i.name: i.route for i in config.routed_instances},
            policy=self.policy,
        )
        self.policy.configure(config.gateway)
        if self.site is not None:
            self.site.configure(config.gateway)

    def apply(self, config: Config) -> None:
        """
        Take a reloaded configuration: its routes and server parameters
        apply from the next request on.
        """
        self.config = config
        self.set_routes(config)
        if self.tls is not None:
            self.tls.client_ca_path = config.gateway.client_ca
            self.tls.watched = self.tls_files()
            self.reload_tls()

    def tls_pair(self) -> PemPair:
        """
        The configured certificate, or the self-signed one in the state
        folder (made on first start).
        """
        gateway = self.config.gateway
        if gateway.certificate is not None and gateway.private_key is not None:
            return self.read_tls_pair()
        pair, made = ensure_self_signed(self.config.state_dir / "tls")
        self.log.info(
            "{what} self-signed gateway certificate {path}",
            what="Made the" if made else "Using the",
            path=str(pair.certificate_path),
        )
        return pair

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        pair = self.tls_pair()
        self.log.info(
            "Gateway certificate SHA-256 fingerprint: {fingerprint}",
            fingerprint=pair.fingerprint,
        )
        self.tls = ReloadingServerTLS(
            self.read_tls_pair,
            client_ca_path=self.config.gateway.client_ca,
            watched=self.tls_files(),
        )
        description = self.config.gateway.listen
        if description.startswith("ssl:"):
            description = "tcp:" + description[len("ssl:") :]
        endpoint = wrapServerTLS(
            self.tls,  # type: ignore[arg-type]
            serverFromString(self.reactor, description),
        )
        self.site = make_gateway_site(
            self.table, self.config.gateway, self.reactor, self.policy
        )
        self.site.metrics = self.metrics
        access_log = self.config.gateway.access_log
        if access_log is not None:
            log_access_to(
                self.site, access_log.path, access_log.max_bytes, access_log.keep
            )
        self.listen_now(endpoint, self.site)
        self.log_routes()

    def tls_files(self) -> tuple[Path, Path]:
        """
        The certificate and key files the gateway serves.
        """
        gateway = self.config.gateway
        if gateway.certificate is not None and gateway.private_key is not None:
            return gateway.certificate, gateway.private_key
        folder = self.config.state_dir / "tls"
        return folder / "gateway.pem", folder / "gateway.key"

    def read_tls_pair(self) -> PemPair:
        """
        Read the certificate and key files the gateway serves.
        """
        return load_pem_pair(*self.tls_files())

    def startService(self) -> None:
        super().startService()
        if self.tls is not None:
            self._tls_check = LoopingCall(self.tls.reload_if_changed)
            self._tls_check.clock = self.reactor
            self._tls_check.start(self.tls_check_interval, now=False)

    def reload_tls(self) -> bool:
        """
        Read the gateway's certificate and key again; new connections get
        them. A file that cannot be used is logged and the current
        certificate kept.

        :returns: whether the new certificate is served.
        """
        return self.tls.reload() if self.tls is not None else False

    def log_routes(self) -> None:
        base = gateway_url(self.config.gateway.listen, self.port)
        routed = self.config.routed_instances
        self.log.info(
            "Gateway listening on {listen}; {count} routed instance(s)",
            listen=self.config.gateway.listen,
            count=len(routed),
        )
        for instance in routed:
            self.log.info(
                "Route: {url} -> instance {instance} on port {port}",
                url=base + route_for(instance.name),
                instance=instance.name,
                port=instance.port,
            )
        if routed:
            self.log.info("Try it: curl -k {url}", url=base + route_for(routed[0].name))

    def stop_accepting(self) -> Deferred[None]:
        """
        Close the listening socket; connections already open go on.
        """
        if self.listening_port is not None:
            self.log.info("Gateway stopped accepting connections")
        return self.stop_listening()

    def in_flight(self) -> int:
        """
        How many requests are being relayed to instances now.
        """
        return sum(route.active for route in self.table.routes.values())

    def drained(self, grace: float) -> Deferred[None]:
        """
        Fire once no request is in flight, or after C{grace} seconds.
        """
        deadline = self.reactor.seconds() + grace
        done: Deferred[None] = Deferred()

        def check() -> None:
            left = self.in_flight()
            if left == 0:
                done.callback(None)
            elif self.reactor.seconds() >= deadline:
                self.log.warn(
                    "Stopping with {count} request(s) still in flight after "
                    "{grace} seconds",
                    count=left,
                    grace=grace,
                )
                done.callback(None)
            else:
                self.reactor.callLater(0.05, check)

        check()
        return done

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._tls_check is not None and self._tls_check.running:
            self._tls_check.stop()
        self._tls_check = None
        self.agent._pool.closeCachedConnections()  # type: ignore[attr-defined]
        return self.stop_listening()


class ManagementService(_ListeningService):
    """
    The management site (C{/health}, C{/status}, C{/metrics}) on its own
    endpoint.
    """

    log = Logger()

    def __init__(self, host: HostService, listen: str) -> None:
        super().__init__()
        self.host = host
        self.listen = listen

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.listen_now(
            serverFromString(self.host.reactor, self.listen),
            make_management_site(self.host, self.host.metrics),
        )
        self.log.info("Management site listening on {listen}", listen=self.listen)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.stop_listening()


@attrs.frozen
class ReloadPlan:
    """
    What applying a new configuration changes.

    :ivar added: instances to start.
    :ivar removed: instances to stop.
    :ivar changed: instances to restart, since their settings differ.
    :ivar routed: instances kept that become routed.
    :ivar unrouted: instances kept that stop being routed.
    :ivar feeds_changed: whether the feeds differ.
    :ivar gateway_changed: whether the gateway's settings differ.
    """

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    routed: tuple[str, ...]
    unrouted: tuple[str, ...]
    feeds_changed: bool
    gateway_changed: bool

    @classmethod
    def between(cls, old: Config, new: Config) -> ReloadPlan:
        """
        Compare two configurations.
        """
        before = {i.name: i for i in old.instances}
        after = {i.name: i for i in new.instances}
        was_routed = {i.name for i in old.routed_instances}
        now_routed = {i.name for i in new.routed_instances}
        return cls(
            added=tuple(n for n in after if n not in before),
            removed=tuple(n for n in before if n not in after),
            changed=tuple(n for n in after if n in before and after[n] != before[n]),
            routed=tuple(
                n for n in after if n in before and n in now_routed - was_routed
            ),
            unrouted=tuple(
                n for n in before if n in after and n in was_routed - now_routed
            ),
            feeds_changed=old.feeds != new.feeds,
            gateway_changed=old.gateway != new.gateway,
        )

    def describe(self) -> list[str]:
        """
        One sentence per kind of change, for the log and C{xsoar-lr reload}.
        """
        said = []
        for verb, names in (
            ("started", self.added),
            ("stopped", self.removed),
            ("restarted", self.changed),
            ("now routed", self.routed),
            ("no longer routed", self.unrouted),
        ):
            if names:
                said.append(f"{verb}: {', '.join(repr(n) for n in names)}")
        if self.feeds_changed:
            said.append("feeds replaced")
        if self.gateway_changed:
            said.append("gateway settings applied")
        return said or ["nothing changed"]


class HostService(MultiService):
    """
    The whole host: supervisor, feeds and gateway. Stopping it stops the
    gateway first, then the feeds, then every instance. C{SIGHUP} reloads
    the configuration (see L{reload}).
    """

    log = Logger()

    def __init__(
        self, config: Config, reactor: Any, state_lock: int | None = None
    ) -> None:
        """
        :param config: the configuration to run.
        :param reactor: the reactor.
        :param state_lock: the descriptor of the state folder's lock, when
            the caller claimed it already (L{xsoar_lr.status.lock_state_dir});
            otherwise the host claims the folder when it starts.
        """
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.state_lock = state_lock
        self.started_at = reactor.seconds()
        self.last_reload: dict[str, Any] | None = None
        self.supervisor = InstanceSupervisor(reactor, on_change=self.write_status)
        for instance in config.instances:
            self.supervisor.add(self.process_spec(config, instance))
        self.supervisor.setServiceParent(self)
        self.feeds: Service | None = None
        self.set_feeds(config)
        self.gateway = GatewayService(config, reactor, self.supervisor)
        self.gateway.setServiceParent(self)
        self.metrics = HostMetrics(self.status_records)
        self.gateway.metrics = self.metrics
        self.management: ManagementService | None = None
        self.set_management(config)

    @staticmethod
    def process_spec(config: Config, instance: InstanceConfig) -> ProcessSpec:
        """
        How the supervisor runs C{instance}.
        """
        return ProcessSpec(
            name=instance.name,
            integration=instance.integration,
            port=instance.port,
            payload=instance_payload(config, instance),
        )

    def set_management(self, config: Config) -> None:
        """
        Serve the management site of C{config}, replacing the one served now.
        """
        if self.management is not None:
            self.management.disownServiceParent()
            self.management = None
        if config.management is not None:
            self.management = ManagementService(self, config.management.listen)
            self.management.setServiceParent(self)

    def set_feeds(self, config: Config) -> None:
        """
        Pull the feeds of C{config}, replacing the ones pulled now.
        """
        if self.feeds is not None:
            self.feeds.disownServiceParent()
            self.feeds = None
        if config.feeds:
            from xsoar_lr.feeds import FeedService

            self.feeds = FeedService(config.feeds, config.store_path, self.reactor)
            self.feeds.setServiceParent(self)

    def privilegedStartService(self) -> None:
        config = self.config
        if self.state_lock is None:
            self.state_lock = lock_state_dir(config.state_dir)
        self.log.info(
            "xsoar-lr starting from {source} with state in {state_dir}",
            source=config.source
            if config.source != EMBEDDED
            else "the embedded default configuration",
            state_dir=str(config.state_dir),
        )
        for warning in config.warnings:
            self.log.warn("Configuration: {warning}", warning=warning)
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            # Nothing can be served; say so plainly rather than with a
            # traceback, and let twistd exit with 1.
            message = (
                f"Cannot listen on {e.interface or '*'}:{e.port}: "
                f"{e.socketError}. Another program uses the port; stop it or "
                "choose another port."
            )
            # twistd's log has taken over standard error by now.
            self.log.critical("{message}", message=message)
            raise SystemExit(1) from None

    def startService(self) -> None:
        globalLogPublisher.addObserver(self.metrics)
        super().startService()
        self.write_status()

    def stopService(self) -> Deferred[None]:
        """
        Stop gracefully: the gateway stops accepting connections, requests
        in flight get up to C{gateway.shutdown_grace} seconds to finish,
        then the feeds and the instances stop.
        """
        grace = self.config.gateway.shutdown_grace
        d = self.gateway.stop_accepting()
        d.addCallback(lambda _: self.gateway.drained(grace))
        d.addCallback(lambda _: MultiService.stopService(self))

        def stopped(result: object) -> object:
            globalLogPublisher.removeObserver(self.metrics)
            self.write_status()
            if self.state_lock is not None:
                os.close(self.state_lock)
                self.state_lock = None
            return result

        d.addBoth(stopped)
        return d

    def status_records(self) -> list[dict[str, Any]]:
        """
        Every instance's state, with whether and where it is routed.
        """
        records = self.supervisor.snapshot()
        for record in records:
            routed = self.config.is_routed(record["name"])
            record["routed"] = routed
            record["route"] = route_for(record["name"]) if routed else None
        return records

    def reload(self) -> Deferred[bool]:
        """
        Read the configuration file again and apply the difference: new
        instances start, removed ones stop, changed ones restart, routes and
        server parameters switch from the next request on, and untouched
        instances and requests in flight are left alone. A file with
        problems changes nothing; every problem is logged.

        :returns: a Deferred that fires with whether the file was applied,
            once the restarted instances' old processes have exited.
        """
        source = None if self.config.source == EMBEDDED else self.config.source
        try:
            new = load_config(source)
        except ConfigError as e:
            for problem in e.problems:
                self.log.error("Reload refused: {problem}", problem=str(problem))
            self.last_reload = {
                "time": time.time(),
                "ok": False,
                "changes": [],
                "problems": [str(p) for p in e.problems],
            }
            self.write_status()
            return succeed(False)

        plan = ReloadPlan.between(self.config, new)
        notes = []
        if new.gateway.listen != self.config.gateway.listen:
            notes.append(
                f"the gateway keeps listening on {self.config.gateway.listen}; "
                f"the new listen ({new.gateway.listen}) takes effect when the "
                "host restarts"
            )
        if new.management != self.config.management:
            self.set_management(new)
            notes.append(
                "management site "
                + ("stopped" if new.management is None else "restarted")
            )
        for warning in new.warnings:
            self.log.warn("Configuration: {warning}", warning=warning)
        self.config = new
        self.gateway.apply(new)
        if plan.feeds_changed:
            self.set_feeds(new)

        stopping = []
        for name in plan.removed:
            stopping.append(self.supervisor.remove(name))
        for name in plan.changed:
            spec = self.process_spec(new, new.instance(name))
            d = self.supervisor.remove(name)
            d.addCallback(lambda _, spec: self.supervisor.add(spec), spec)
            stopping.append(d)
        for name in plan.added:
            self.supervisor.add(self.process_spec(new, new.instance(name)))

        changes = plan.describe() + notes
        if notes and changes[0] == "nothing changed":
            changes = changes[1:]
        self.log.info(
            "Reloaded {source}: {changes}",
            source=new.source,
            changes="; ".join(changes),
        )
        self.last_reload = {
            "time": time.time(),
            "ok": True,
            "changes": changes,
            "problems": [],
        }
        self.write_status()
        done: Deferred[Any] = DeferredList(stopping, consumeErrors=True)
        done.addCallback(lambda _: True)
        return done

    def write_status(self) -> None:
        """
        Record the host's and every instance's state in the state folder.
        """
        records = self.status_records()
        host = {
            "pid": os.getpid(),
            "config": None
            if self.config.source == EMBEDDED
            else str(Path(self.config.source).resolve()),
            "started": time.time() - (self.reactor.seconds() - self.started_at),
            "gateway_port": self.gateway.port if hasattr(self, "gateway") else None,
            "last_reload": self.last_reload,
        }
        try:
            write_status(self.config.state_dir, records, host)
        except OSError as e:
            self.log.error(
                "Cannot write the status file in {state_dir}: {error}",
                state_dir=str(self.config.state_dir),
                error=os.strerror(e.errno or 0),
            )
