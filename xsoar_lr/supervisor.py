"""
Supervision of instance processes: each instance runs in a child process of
its own, is restarted with back-off when it exits, and is stopped with the
host.

Twisted's C{ProcessMonitor} was the first candidate, but it gives children an
empty environment by default, never logs exit codes, does not wait for its
children when stopped and cannot tell a child that is starting from one that
is serving. The gateway needs that last fact to answer C{503} rather than
C{502}, so this module keeps the state itself.
"""

from __future__ import annotations

import enum
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import InvalidLogLevelError, Logger, LogLevel
from twisted.python.failure import Failure

__all__ = ["InstanceState", "InstanceSupervisor", "ProcessSpec"]

#: The file descriptor on which a child tells the host it is serving.
CONTROL_FD = 3

#: The child's exit codes that mean "do not bother restarting quickly".
EXIT_CANNOT_LISTEN = 3
EXIT_BAD_CONFIGURATION = 4


class InstanceState(str, enum.Enum):
    """
    Where an instance's process is in its life.
    """

    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"


@attrs.frozen
class ProcessSpec:
    """
    How to run one instance.

    :ivar name: the instance's name.
    :ivar integration: its integration's id, for status reports.
    :ivar port: its port, for status reports.
    :ivar payload: what the child reads on its standard input (JSON): the
        instance's settings, secrets included, which is why they travel
        through a pipe and not the command line or the environment.
    """

    name: str
    integration: str
    port: int
    payload: Mapping[str, Any]


@attrs.define(eq=False)
class _Supervised:
    spec: ProcessSpec
    state: InstanceState = InstanceState.STOPPED
    protocol: _InstanceProtocol | None = None
    started_at: float | None = None
    restarts: int = 0
    last_exit: str | None = None
    delay: float = 0.0
    restart_call: IDelayedCall | None = None
    kill_call: IDelayedCall | None = None
    removing: bool = False
    health: str | None = None
    exited: list[Deferred[None]] = attrs.Factory(list)

    @property
    def pid(self) -> int | None:
        if self.protocol is None or self.protocol.transport is None:
            return None
        pid: int | None = self.protocol.transport.pid  # type: ignore[attr-defined]
        return pid


class _InstanceProtocol(ProcessProtocol):
    """
    Talks to one instance's process: hands it its settings, logs its output
    as the instance's, and listens for its readiness.
    """

    log = Logger()

    def __init__(self, supervisor: InstanceSupervisor, name: str) -> None:
        self.supervisor = supervisor
        self.name = name
        self.buffers: dict[int, bytes] = {}

    def connectionMade(self) -> None:
        payload = self.supervisor.payload(self.name)
        assert self.transport is not None
        # Standard input stays open afterwards: the child stops when it
        # closes, which is how children learn that the host died.
        self.transport.writeToChild(
            0, json.dumps(payload, default=str).encode() + b"\n"
        )  # type: ignore[attr-defined]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self.buffers.get(childFD, b"") + data).split(b"\n")
        self.buffers[childFD] = lines.pop()
        for line in lines:
            self.line_received(childFD, line)

    def line_received(self, fd: int, line: bytes) -> None:
        text = line.decode("utf-8", "replace").strip()
        if fd == CONTROL_FD:
            command, _, argument = text.partition(" ")
            if command == "ready":
                self.supervisor.instance_ready(self.name)
            elif command == "health":
                self.supervisor.instance_health(self.name, argument)
            return
        if not text:
            return
        record = _child_event(text) if fd == 2 else None
        if record is None:
            # Output that is not the instance's log: print() calls, or a
            # traceback from before its logging started.
            self.log.info(
                "[{instance}] {line}",
                instance=self.name,
                line=text,
                stream="stdout" if fd == 1 else "stderr",
            )
            return
        level, message, fields = record
        self.log.emit(
            level,
            "[{instance}] {line}",
            instance=self.name,
            line=message,
            child_namespace=fields.pop("namespace", None),
            child_fields=fields,
            **({"metric": fields["metric"]} if "metric" in fields else {}),
        )

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self.buffers.items():
            if rest:
                self.line_received(fd, rest)
        self.buffers.clear()
        self.supervisor.instance_exited(self.name, reason)


def _child_event(text: str) -> tuple[LogLevel, str, dict[str, Any]] | None:
    """
    Read one of an instance's log events, which it writes to standard error
    as JSON lines (see L{xsoar_lr.logs}); C{None} for any other line.
    """
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("message"), str):
        return None
    try:
        level = LogLevel.levelWithName(str(record.pop("level", "info")))
    except InvalidLogLevelError:
        level = LogLevel.info
    record.pop("time", None)
    line: str = record.pop("message")
    traceback = record.pop("traceback", None)
    if traceback:
        line = f"{line}\n{traceback}"
    return level, line, record


def describe_exit(reason: Failure) -> str:
    """
    Say how a process ended, in the words an operator expects.
    """
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exit code 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            try:
                return f"signal {signal.Signals(value.signal).name}"
            except ValueError:
                return f"signal {value.signal}"
        return f"exit code {value.exitCode}"
    return str(value)


class InstanceSupervisor(Service):
    """
    Runs each instance in a child process, restarts it with back-off when it
    exits, and stops every child when the service stops.

    :ivar min_restart_delay: the first back-off delay, in seconds.
    :ivar max_restart_delay: the longest back-off delay.
    :ivar stable_after: a child that ran this long before exiting is
        restarted after the first delay again.
    :ivar kill_after: seconds between C{SIGTERM} and C{SIGKILL} when stopping.
    """

    log = Logger()
    min_restart_delay = 0.5
    max_restart_delay = 60.0
    stable_after = 10.0
    kill_after = 10.0

    def __init__(
        self,
        reactor: Any,
        command: list[str] | None = None,
        environment: Mapping[str, str] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        """
        :param reactor: the reactor that spawns the processes.
        :param command: the child's command line; by default this Python
            running L{xsoar_lr.child}.
        :param environment: the child's environment; by default the host's,
            less the socket-activation variables, with this package importable.
        :param on_change: called after any instance changes state.
        """
        self.reactor = reactor
        self.command = command or [sys.executable, "-m", "xsoar_lr.child"]
        self.environment = dict(
            environment if environment is not None else child_environment()
        )
        self.on_change = on_change
        self.instances: dict[str, _Supervised] = {}

    # Queries.

    def state(self, name: str) -> InstanceState:
        """
        The state of the named instance (C{stopped} for one that is unknown).
        """
        supervised = self.instances.get(name)
        return InstanceState.STOPPED if supervised is None else supervised.state

    def retry_after(self, name: str) -> int:
        """
        Whole seconds until the named instance is expected back, at least 1.
        """
        supervised = self.instances.get(name)
        if supervised is None or supervised.restart_call is None:
            return 1
        remaining = supervised.restart_call.getTime() - self.reactor.seconds()
        return max(1, int(remaining + 0.999) + 1)

    def pid(self, name: str) -> int | None:
        """
        The process id of the named instance, while it has one.
        """
        supervised = self.instances.get(name)
        return None if supervised is None else supervised.pid

    def snapshot(self) -> list[dict[str, Any]]:
        """
        Every instance's state, for status reports.
        """
        now = self.reactor.seconds()
        return [
            {
                "name": s.spec.name,
                "integration": s.spec.integration,
                "port": s.spec.port,
                "state": s.state.value,
                "pid": s.pid,
                "restarts": s.restarts,
                "last_exit": s.last_exit,
                "health": s.health,
                "uptime": None
                if s.started_at is None or s.state is not InstanceState.RUNNING
                else round(now - s.started_at, 3),
                # Wall-clock time, so that readers of the status file can
                # work out the uptime when they read it.
                "running_since": None
                if s.started_at is None or s.state is not InstanceState.RUNNING
                else round(time.time() - (now - s.started_at), 3),
            }
            for s in self.instances.values()
        ]

    def payload(self, name: str) -> Mapping[str, Any]:
        return self.instances[name].spec.payload

    # Changes.

    def add(self, spec: ProcessSpec) -> None:
        """
        Supervise a new instance; it starts now if the service is running.

        :raises KeyError: when an instance of that name is supervised already.
        """
        if spec.name in self.instances:
            raise KeyError(spec.name)
        self.instances[spec.name] = _Supervised(spec, delay=self.min_restart_delay)
        if self.running:
            self._spawn(spec.name)

    def remove(self, name: str) -> Deferred[None]:
        """
        Stop the named instance and forget it.

        :returns: a Deferred that fires once its process has exited.
        """
        supervised = self.instances[name]
        supervised.removing = True
        d = self._stop(supervised)
        d.addCallback(lambda _: self._forget(name))
        return d

    def _forget(self, name: str) -> None:
        self.instances.pop(name, None)
        self._changed()

    def startService(self) -> None:
        super().startService()
        for name in list(self.instances):
            self._spawn(name)

    def stopService(self) -> Deferred[None]:
        """
        Stop every child: C{SIGTERM}, then C{SIGKILL} after L{kill_after}.

        :returns: a Deferred that fires once every child has exited.
        """
        super().stopService()
        stops = [self._stop(s) for s in self.instances.values()]
        d: Deferred[Any] = DeferredList(stops, consumeErrors=True)
        d.addCallback(lambda _: None)
        return d

    # The life of a child.

    def _spawn(self, name: str) -> None:
        supervised = self.instances[name]
        supervised.restart_call = None
        protocol = _InstanceProtocol(self, name)
        supervised.protocol = protocol
        supervised.state = InstanceState.STARTING
        supervised.started_at = self.reactor.seconds()
        try:
            self.reactor.spawnProcess(
                protocol,
                self.command[0],
                self.command,
                env=self.environment,
                childFDs={0: "w", 1: "r", 2: "r", CONTROL_FD: "r"},
            )
        except OSError:
            self.log.failure("Instance {instance} could not be started", instance=name)
            supervised.protocol = None
            self._schedule_restart(supervised, "it could not be started")
            return
        self.log.info(
            "Instance {instance} started (pid {pid})",
            instance=name,
            pid=supervised.pid,
        )
        self._changed()

    def instance_ready(self, name: str) -> None:
        """
        The named instance's process says it is serving.
        """
        supervised = self.instances.get(name)
        if supervised is None or supervised.state is not InstanceState.STARTING:
            return
        supervised.state = InstanceState.RUNNING
        supervised.started_at = self.reactor.seconds()
        self.log.info(
            "Instance {instance} is serving on port {port}",
            instance=name,
            port=supervised.spec.port,
        )
        self._changed()

    def instance_health(self, name: str, report: str) -> None:
        """
        The named instance reports its own health (XSOAR's
        C{updateModuleHealth}): C{report} is a JSON string with the error
        message, or C{null} when it is healthy again.
        """
        supervised = self.instances.get(name)
        if supervised is None:
            return
        try:
            message = json.loads(report)
        except ValueError:
            message = report
        message = None if message in (None, "") else str(message)
        if message == supervised.health:
            return
        supervised.health = message
        if message is None:
            self.log.info("Instance {instance} reports it is healthy", instance=name)
        else:
            self.log.warn(
                "Instance {instance} reports a problem: {problem}",
                instance=name,
                problem=message,
            )
        self._changed()

    def instance_exited(self, name: str, reason: Failure) -> None:
        """
        The named instance's process ended; restart it unless it was stopped
        on purpose.
        """
        supervised = self.instances.get(name)
        if supervised is None:
            return
        how = describe_exit(reason)
        supervised.last_exit = how
        supervised.health = None
        supervised.protocol = None
        if supervised.kill_call is not None and supervised.kill_call.active():
            supervised.kill_call.cancel()
        supervised.kill_call = None
        waiting, supervised.exited = supervised.exited, []

        if supervised.removing or not self.running:
            supervised.state = InstanceState.STOPPED
            self.log.info("Instance {instance} stopped ({how})", instance=name, how=how)
            self._changed()
        else:
            lived = self.reactor.seconds() - (supervised.started_at or 0)
            if lived >= self.stable_after:
                supervised.delay = self.min_restart_delay
            self._schedule_restart(supervised, f"it exited with {how}")
        for d in waiting:
            d.callback(None)

    def _schedule_restart(self, supervised: _Supervised, why: str) -> None:
        delay = supervised.delay
        supervised.delay = min(delay * 2, self.max_restart_delay)
        supervised.state = InstanceState.RESTARTING
        supervised.restarts += 1
        supervised.restart_call = self.reactor.callLater(
            delay, self._spawn, supervised.spec.name
        )
        self.log.warn(
            "Instance {instance} will be restarted in {delay:.1f} seconds because "
            "{why}",
            instance=supervised.spec.name,
            delay=delay,
            why=why,
        )
        self._changed()

    def _stop(self, supervised: _Supervised) -> Deferred[None]:
        if supervised.restart_call is not None and supervised.restart_call.active():
            supervised.restart_call.cancel()
        supervised.restart_call = None
        protocol = supervised.protocol
        if protocol is None or protocol.transport is None:
            supervised.state = InstanceState.STOPPED
            return succeed(None)
        d: Deferred[None] = Deferred()
        supervised.exited.append(d)
        try:
            protocol.transport.signalProcess("TERM")  # type: ignore[attr-defined]
        except ProcessExitedAlready:
            return d
        if supervised.kill_call is None:
            supervised.kill_call = self.reactor.callLater(
                self.kill_after, self._kill, supervised
            )
        return d

    def _kill(self, supervised: _Supervised) -> None:
        supervised.kill_call = None
        protocol = supervised.protocol
        if protocol is None or protocol.transport is None:
            return
        self.log.warn(
            "Instance {instance} did not stop within {seconds} seconds; killing it",
            instance=supervised.spec.name,
            seconds=self.kill_after,
        )
        try:
            protocol.transport.signalProcess("KILL")  # type: ignore[attr-defined]
        except ProcessExitedAlready:
            pass

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def child_environment(
    base: Mapping[str, str] | None = None, extra_paths: Iterable[str] = ()
) -> dict[str, str]:
    """
    The environment for instance processes: the host's own, less the
    variables that belong to the host alone (systemd's socket activation and
    notification), with the folder this package was loaded from first on
    C{PYTHONPATH} so that children run the same code as the host.
    """
    environment = dict(os.environ if base is None else base)
    for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"):
        environment.pop(key, None)
    here = str(Path(__file__).resolve().parent.parent)
    paths = [here, *extra_paths]
    if environment.get("PYTHONPATH"):
        paths.append(environment["PYTHONPATH"])
    environment["PYTHONPATH"] = os.pathsep.join(paths)
    return environment
