"""
The public surface for integration authors.

Everything an integration needs from xsoar-lr is in this module (and, for its
tests, in L{xsoar_lr.testing}); nothing else in the package is promised to
stay the same between releases.

Registering an integration
==========================

An integration is registered with Twisted's plugin system: a module in a
C{twisted/plugins/} folder (with no C{__init__.py}) holds an object that
provides L{IIntegration}. The easiest way to make one is L{Integration}, which
names the module holding the code and imports it only when an instance of the
integration is configured or started::

    from xsoar_lr.api import Integration

    webhook = Integration(
        id="generic-webhook",
        module="acme_webhook.integration",
        display_name="Generic Webhook",
        description="Receives JSON events over HTTP.",
    )

The integration module
======================

The named module defines:

 - C{PARAMETERS}: a sequence of L{Parameter}, the declared schema of an
   instance's C{params}. The host checks every configured instance against it
   when the configuration is loaded (C{xsoar-lr check} reports each problem
   with the file, line, instance and parameter), fills in defaults, and hands
   the result to the instance as L{InstanceContext.params}.
 - C{make_resource(context)}: returns the C{twisted.web} resource (an
   C{IResource}) that serves one instance; C{context} is an
   L{InstanceContext}. The resource sees C{/} and below: the gateway strips
   the route.
 - optionally C{check(params)}: returns a list of L{ParameterProblem} for
   rules that span several parameters (an empty list when all is well).
 - optionally C{make_service(context)}: returns a Twisted C{IService} (or
   C{None}) for long-running work beside the web site.

Long-running work
=================

Work that is not an answer to a request, such as a loop that polls a remote
API (XSOAR's C{long-running-execution}), belongs in the service that
C{make_service(context)} returns. The host starts it once the instance
listens and stops it, waiting for the Deferred C{stopService} may return,
before the instance's process exits. A C{TimerService} whose C{clock} is
C{context.reactor} is often all that is needed::

    from twisted.application.internet import TimerService

    def make_service(context):
        service = TimerService(60, poll, context)
        service.clock = context.reactor
        return service

Blocking calls
==============

Each instance runs in a process of its own, so code that blocks freezes only
its own instance, never the gateway or another instance. Within an
instance, though, everything on the reactor thread waits while a call
blocks. Run blocking calls (a synchronous HTTP client, a slow disk, a large
SQLite query, CPU-heavy parsing) in the reactor's thread pool with
L{InstanceContext.run_in_thread}, which is
C{twisted.internet.threads.deferToThreadPool(context.reactor,
context.reactor.getThreadPool(), f, *args)}, and return C{NOT_DONE_YET} from
the resource; write the response when the Deferred fires. Code running in a
thread must not touch Twisted objects (requests, transports); use
C{context.reactor.callFromThread} for that. C{context.log} may be used from
any thread.

What an instance gets
=====================

L{InstanceContext}: the validated C{params}, a C{log} bound to the instance,
the indicator C{store}, the persistent C{integration_context}
(L{xsoar_lr.kvstate.KeyValueState}), C{report_health} and the C{route} it is
published at (with L{InstanceContext.absolute_url} for building absolute URLs
behind the gateway).
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface, implementer

if TYPE_CHECKING:
    from twisted.application.service import IService
    from twisted.internet.defer import Deferred
    from twisted.web.resource import IResource
    from twisted.web.server import Request

    from xsoar_lr.kvstate import KeyValueState
    from xsoar_lr.store import IndicatorStore


__all__ = [
    "HealthReporter",
    "IIntegration",
    "InstanceContext",
    "Integration",
    "IntegrationLoadError",
    "Parameter",
    "ParameterError",
    "ParameterProblem",
    "find_integrations",
    "logging_health_reporter",
    "mask_secrets",
    "validate_parameters",
]

_T = TypeVar("_T")

#: What the host shows instead of a secret value.
MASK = "********"


def _as_tuple(values: Iterable[Any]) -> tuple[Any, ...]:
    """
    Keep a parameter's choices as a tuple, whatever sequence was given.
    """
    return tuple(values)


@attrs.frozen
class ParameterProblem:
    """
    One thing wrong with an instance's parameters.

    :ivar parameter: the parameter's name, or C{None} for a problem that is
        about the parameters as a whole.
    :ivar message: a full sentence saying what is wrong and what to do.
    """

    parameter: str | None
    message: str


class ParameterError(ValueError):
    """
    An instance's parameters are not acceptable to its integration.

    :ivar problems: every problem found, not just the first.
    """

    def __init__(self, problems: Sequence[ParameterProblem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(p.message for p in self.problems))


_KINDS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "list": (list, tuple),
    "mapping": (dict,),
    "credentials": (dict,),
}

_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0"})
_CREDENTIAL_KEYS = ("identifier", "password")


@attrs.frozen
class Parameter:
    """
    The declaration of one instance parameter.

    :ivar name: the key in the instance's C{params}, spelled as XSOAR spells it
        where the integration has an XSOAR counterpart (C{credentials},
        C{incidentType}).
    :ivar kind: one of C{str}, C{int}, C{float}, C{bool}, C{list} (of strings),
        C{mapping} or C{credentials}. Strings such as C{"true"} or C{"42"} are
        accepted for C{bool}, C{int} and C{float}, since XSOAR stores every
        parameter as text; a comma-separated string is accepted for C{list}.
        C{credentials} is XSOAR's credentials type: a mapping with the keys
        C{identifier} (a user name, or C{_header:<Name>} for a token sent in
        that header) and C{password}; its password is always treated as a
        secret.
    :ivar default: the value used when the parameter is absent; C{None} means
        absent values stay C{None}. It is checked against the declaration when
        the declaration is made.
    :ivar required: the parameter must be given.
    :ivar choices: the accepted values, if only some are.
    :ivar secret: the value is a credential: it is never logged, never
        repeated in error messages, and masked wherever parameters are shown
        (C{xsoar-lr check}).
    :ivar minimum: the smallest accepted number, for C{int} and C{float}.
    :ivar description: what the parameter does, for C{xsoar-lr check} and the
        documentation.
    :ivar display: the label XSOAR shows for the parameter in its instance
        settings (C{"Incident type"}), for documentation and for users who
        know the XSOAR form; empty means the name is used.
    """

    name: str = attrs.field(validator=attrs.validators.min_len(1))
    kind: str = attrs.field(
        default="str", validator=attrs.validators.in_(sorted(_KINDS))
    )
    default: Any = None
    required: bool = False
    choices: tuple[Any, ...] = attrs.field(default=(), converter=_as_tuple)
    secret: bool = False
    minimum: float | None = None
    description: str = ""
    display: str = ""

    def __attrs_post_init__(self) -> None:
        if self.default is not None:
            try:
                self.coerce(self.default)
            except ValueError as e:
                raise ValueError(
                    f"The default of parameter {self.name!r} does not fit its "
                    f"own declaration: {e}."
                ) from None

    @property
    def label(self) -> str:
        """
        The XSOAR display name, or the name when there is none.
        """
        return self.display or self.name

    @property
    def is_secret(self) -> bool:
        """
        Whether values of this parameter are (or hold) credentials.
        """
        return self.secret or self.kind == "credentials"

    def _shown(self, value: Any) -> str:
        return "the given value" if self.is_secret else repr(value)

    def coerce(self, value: Any) -> Any:
        """
        Turn a configured value into the declared kind.

        :raises ValueError: with a sentence that says what was expected (and,
            for secret parameters, does not repeat the value).
        """
        shown = self._shown(value)
        if self.kind == "credentials":
            return self._coerce_credentials(value)
        if self.kind == "bool" and isinstance(value, str):
            word = value.strip().lower()
            if word in _TRUE_WORDS:
                return True
            if word in _FALSE_WORDS:
                return False
            raise ValueError(f"expected true or false, not {shown}")
        if self.kind in ("int", "float") and isinstance(value, str):
            try:
                value = int(value) if self.kind == "int" else float(value)
            except ValueError:
                raise ValueError(f"expected a number, not {shown}") from None
        if self.kind == "list" and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, bool) and self.kind in ("int", "float"):
            raise ValueError(f"expected a number, not {shown}")
        if not isinstance(value, _KINDS[self.kind]):
            raise ValueError(f"expected a value of kind {self.kind}, not {shown}")
        if self.kind == "list":
            value = [str(item) for item in cast(Iterable[Any], value)]
        if self.choices and value not in self.choices:
            accepted = ", ".join(repr(c) for c in self.choices)
            raise ValueError(f"{shown} is not one of {accepted}")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{shown} is less than {self.minimum!r}")
        return value

    def _coerce_credentials(self, value: Any) -> dict[str, str]:
        if not isinstance(value, Mapping):
            raise ValueError(
                "expected a mapping with the keys 'identifier' and 'password', "
                "such as {identifier: alice, password: ...}"
            )
        unknown = sorted(str(k) for k in value if k not in _CREDENTIAL_KEYS)
        if unknown:
            raise ValueError(
                f"unknown key(s) {', '.join(map(repr, unknown))}; credentials "
                "have only 'identifier' and 'password'"
            )
        result = {}
        for key in _CREDENTIAL_KEYS:
            item = value.get(key)
            if item is None:
                item = ""
            if not isinstance(item, str):
                # Only the key is named: the value may be the secret itself.
                raise ValueError(f"'{key}' must be a string")
            result[key] = item
        return result


def validate_parameters(
    schema: Sequence[Parameter],
    params: Mapping[str, Any],
    *,
    instance: str | None = None,
) -> dict[str, Any]:
    """
    Check C{params} against C{schema} and fill in the defaults.

    :param instance: the instance's name; when given, every message starts
        with it.
    :returns: the validated parameters, one key per declared parameter.
        Defaults are copies, so an instance may change its own.
    :raises ParameterError: listing every unknown, missing or bad parameter.
    """
    declared = {p.name: p for p in schema}
    where = "" if instance is None else f"Instance {instance!r}: "
    problems = []
    for name in params:
        if name in declared:
            continue
        by_label = [p.name for p in schema if p.display and p.display == name]
        hint = f" Did you mean {by_label[0]!r}?" if by_label else ""
        problems.append(
            ParameterProblem(
                name,
                f"{where}Parameter {name!r} is not a parameter of this "
                f"integration; the known ones are: "
                f"{', '.join(sorted(declared)) or 'none'}.{hint}",
            )
        )
    result: dict[str, Any] = {}
    for parameter in schema:
        if parameter.name not in params or params[parameter.name] is None:
            if parameter.required:
                problems.append(
                    ParameterProblem(
                        parameter.name,
                        f"{where}Parameter {parameter.name!r} is required; set it "
                        "under the instance's params.",
                    )
                )
            result[parameter.name] = copy.deepcopy(parameter.default)
            continue
        try:
            result[parameter.name] = parameter.coerce(params[parameter.name])
        except ValueError as e:
            problems.append(
                ParameterProblem(
                    parameter.name, f"{where}Parameter {parameter.name!r}: {e}."
                )
            )
    if problems:
        raise ParameterError(problems)
    return result


def mask_secrets(
    schema: Sequence[Parameter], params: Mapping[str, Any]
) -> dict[str, Any]:
    """
    Return C{params} with the value of every secret parameter replaced, for
    display. Credentials keep their identifier and lose their password.
    """
    kinds = {p.name: p for p in schema}
    shown: dict[str, Any] = {}
    for key, value in params.items():
        parameter = kinds.get(key)
        if parameter is None or not value:
            shown[key] = value
        elif parameter.kind == "credentials" and isinstance(value, Mapping):
            shown[key] = {
                k: (MASK if k == "password" and v else v) for k, v in value.items()
            }
        elif parameter.secret:
            shown[key] = MASK
        else:
            shown[key] = value
    return shown


#: Reports an instance's health: a sentence saying what is wrong, or C{None}
#: once all is well again (XSOAR's C{updateModuleHealth}).
HealthReporter = Callable[[str | None], None]


def logging_health_reporter(log: Logger, instance: str) -> HealthReporter:
    """
    A health reporter that only logs: a problem at warning level, and the
    return to health at info level once after a problem.
    """
    last: list[str | None] = [None]

    def report(message: str | None) -> None:
        if message is not None:
            log.warn(
                "Instance {instance} is unhealthy: {health}",
                instance=instance,
                health=message,
            )
        elif last[0] is not None:
            log.info("Instance {instance} is healthy again", instance=instance)
        last[0] = message

    return report


def _default_health(context: InstanceContext) -> HealthReporter:
    return logging_health_reporter(context.log, context.name)


def _first_header(request: Request, name: bytes) -> str | None:
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        return None
    return values[0].decode("latin-1").split(",")[0].strip() or None


@attrs.define
class InstanceContext:
    """
    What an instance's code is given when it is built.

    :ivar name: the instance's name, exactly as configured.
    :ivar integration: the id of the instance's integration.
    :ivar params: the validated parameters, one key per declared parameter.
    :ivar state_dir: a folder that belongs to this instance alone and
        survives restarts. Keep the instance's own files here (an SQLite
        database, say).
    :ivar route: the path the gateway publishes the instance at (for example
        C{/instance/execute/edl}, the name percent-encoded), or C{None} when
        it is not routed, as it was when the instance started: a reload that
        only changes routing does not restart instances. To build URLs for a
        request, use L{absolute_url}, which follows the request's headers.
    :ivar reactor: the reactor to use; never import the global one.
    :ivar log: a logger whose events name the instance. Use format strings
        with named fields (C{log.info("Stored {count} events", count=n)}); it
        may be used from any thread. Never log a secret parameter.
    :ivar report_health: call with a sentence when the instance cannot do its
        work (a remote API refuses its credentials, the disk is full), and
        with C{None} when it can again. By default the report is logged.
    :ivar host_status: reads the host's instances and their states, as
        L{xsoar_lr.status.read_status} gives them (blocking: call it in a
        thread). Outside a host it reads nothing.
    """

    name: str
    integration: str
    params: dict[str, Any]
    state_dir: Path
    route: str | None
    reactor: Any
    log: Logger
    _open_store: Callable[[], IndicatorStore]
    _store: IndicatorStore | None = None
    report_health: HealthReporter = attrs.field(
        default=attrs.Factory(_default_health, takes_self=True)
    )
    host_status: Callable[[], list[dict[str, Any]]] = list
    _integration_context: KeyValueState | None = attrs.field(default=None, init=False)

    @property
    def store(self) -> IndicatorStore:
        """
        The host's indicator store, shared by every instance, opened on first
        use (L{xsoar_lr.store.IndicatorStore}: C{search}, C{get}, C{add},
        C{remove}, ...). Its methods block; large searches belong in a thread
        (L{run_in_thread}).
        """
        if self._store is None:
            self._store = self._open_store()
        return self._store

    @property
    def integration_context(self) -> KeyValueState:
        """
        The instance's persistent key-value state (XSOAR's integration
        context), opened on first use from C{integration-context.sqlite3} in
        L{state_dir}. It survives restarts and is safe to write from several
        threads and processes at once; see L{xsoar_lr.kvstate.KeyValueState}.
        Values are anything JSON holds.
        """
        if self._integration_context is None:
            from xsoar_lr.kvstate import KeyValueState, state_path

            self._integration_context = KeyValueState.open(state_path(self.state_dir))
        return self._integration_context

    def get_integration_context(self) -> dict[str, Any]:
        """
        The whole integration context as a new dict (XSOAR's
        C{get_integration_context()}); changing the dict changes nothing
        until it is set.
        """
        state, _ = self.integration_context.snapshot()
        return state

    def set_integration_context(
        self, value: Mapping[str, Any], *, version: int | None = None
    ) -> int:
        """
        Replace the whole integration context with C{value} (XSOAR's
        C{set_integration_context()}).

        :param version: the version read with
            C{context.integration_context.snapshot()}; when given and another
            writer changed the context since, nothing is written and
            L{xsoar_lr.kvstate.StateConflict} is raised.
        :returns: the new version.
        """
        return self.integration_context.replace(value, version=version)

    def update_integration_context(self, changes: Mapping[str, Any]) -> int:
        """
        Set some keys of the integration context and keep the others, in
        one transaction.

        :returns: the new version.
        """
        return self.integration_context.update(changes)

    def run_in_thread(
        self, function: Callable[..., _T], *args: Any, **kwargs: Any
    ) -> Deferred[_T]:
        """
        Call C{function(*args, **kwargs)} in the reactor's thread pool, so
        that a blocking call does not stop the instance from serving.

        :returns: a Deferred that fires on the reactor thread with the
            result, or fails with the exception.
        """
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), function, *args, **kwargs
        )

    def absolute_url(self, request: Request, path: str = "") -> str:
        """
        The absolute URL a client uses to reach C{path} (an instance path
        such as C{"/events"}) of this instance, as seen by the client of
        C{request}: behind the gateway,
        C{https://<gateway host>/instance/execute/<name><path>}; reached
        directly, C{http://<host>:<port><path>}.

        The gateway replaces any C{X-Forwarded-*} header a client sends, so
        the URL is trustworthy behind it; a client that reaches the instance's
        port directly can choose the URLs it is told.
        """
        if path and not path.startswith("/"):
            raise ValueError(f"The path {path!r} must start with '/'.")
        prefix = _first_header(request, b"x-forwarded-prefix")
        if prefix is not None:
            scheme = _first_header(request, b"x-forwarded-proto") or "https"
            host = _first_header(request, b"x-forwarded-host")
        else:
            scheme = "https" if request.isSecure() else "http"
            host = None
            prefix = ""
        if host is None:
            host = _first_header(request, b"host")
        if host is None:
            address = request.getHost()
            host = f"{address.host}:{address.port}"
        return f"{scheme}://{host}{prefix}{path}"

    def close(self, *, close_store: bool = True) -> None:
        """
        Close the integration context and the store, if they were opened.
        The host's instance processes need not call it; tests do.

        :param close_store: close the store too; C{False} when it belongs to
            someone else (a store shared by a test), which then just forgets it.
        """
        if self._integration_context is not None:
            self._integration_context.close()
            self._integration_context = None
        if self._store is not None:
            if close_store:
                self._store.close()
            self._store = None


class IIntegration(Interface):
    """
    A kind of long-running HTTP service that instances can be made of.
    """

    id = Attribute("The integration's id, used as `integration:` in the config.")
    display_name = Attribute("A human name for the integration.")
    description = Attribute("One sentence on what the integration does.")

    def parameters() -> Sequence[Parameter]:
        """
        The declared parameters of the integration.
        """

    def validate(params: Mapping[str, Any]) -> dict[str, Any]:
        """
        Check an instance's parameters and fill in defaults.

        @raise ParameterError: naming each bad parameter.
        """

    def make_resource(context: InstanceContext) -> IResource:
        """
        Build the web resource that serves one instance.
        """

    def make_service(context: InstanceContext) -> IService | None:
        """
        Build the service for long-running work beside the web site, if any.
        """


class IntegrationLoadError(ImportError):
    """
    An integration's module cannot be imported, or lacks what it must
    define; the message names the integration, the module and what to add.
    """


@implementer(IPlugin, IIntegration)
@attrs.frozen
class Integration:
    """
    A lazily loaded integration: the module named by C{module} is imported
    only when the integration is used, so that registering it costs nothing
    at plugin scan time.

    The module defines C{PARAMETERS} and C{make_resource(context)}, and may
    define C{make_service(context)} and C{check(params)}.

    :ivar id: the id configurations name it by (C{integration: <id>}); letters,
        digits and dashes by convention.
    :ivar module: the dotted name of the module with the code.
    :ivar display_name: a human name, as XSOAR shows it.
    :ivar description: one sentence on what the integration does.
    """

    id: str
    module: str
    display_name: str
    description: str = ""

    def _module(self) -> Any:
        try:
            module = importlib.import_module(self.module)
        except ImportError as e:
            raise IntegrationLoadError(
                f"Integration {self.id!r}: its module {self.module!r} cannot be "
                f"imported ({e})."
            ) from e
        for required in ("PARAMETERS", "make_resource"):
            if not hasattr(module, required):
                raise IntegrationLoadError(
                    f"Integration {self.id!r}: its module {self.module!r} defines "
                    f"no {required}; see xsoar_lr.api for what an integration "
                    "module defines."
                )
        return module

    def parameters(self) -> Sequence[Parameter]:
        """
        The module's C{PARAMETERS}.
        """
        return tuple(self._module().PARAMETERS)

    def validate(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """
        Validate C{params} against C{PARAMETERS}, then apply the module's
        C{check} if it has one.

        :raises ParameterError: listing every problem.
        """
        module = self._module()
        result = validate_parameters(module.PARAMETERS, params)
        check = getattr(module, "check", None)
        if check is not None:
            problems = check(result)
            if problems:
                raise ParameterError(problems)
        return result

    def make_resource(self, context: InstanceContext) -> IResource:
        """
        Call the module's C{make_resource(context)}.
        """
        resource: IResource = self._module().make_resource(context)
        return resource

    def make_service(self, context: InstanceContext) -> IService | None:
        """
        Call the module's C{make_service(context)}, or return C{None} when it
        has none.
        """
        factory = getattr(self._module(), "make_service", None)
        return None if factory is None else factory(context)


def find_integrations() -> dict[str, IIntegration]:
    """
    Return every installed integration, by id.
    """
    from twisted.plugin import getPlugins

    import twisted.plugins

    return {i.id: i for i in getPlugins(IIntegration, twisted.plugins)}
