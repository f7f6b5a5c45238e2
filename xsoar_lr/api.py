"""
The public surface for integration authors.

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

The named module defines C{PARAMETERS}, a sequence of L{Parameter}, and
C{make_resource(context)}, which returns the C{twisted.web} resource that serves
an instance. It may also define C{make_service(context)}, returning a Twisted
service for long-running work that runs beside the web site (a polling loop,
say), and C{check(params)}, which returns a list of L{ParameterProblem} for
rules that span several parameters.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface, implementer

if TYPE_CHECKING:
    from twisted.application.service import IService
    from twisted.web.resource import IResource

    from xsoar_lr.store import IndicatorStore


__all__ = [
    "IIntegration",
    "InstanceContext",
    "Integration",
    "Parameter",
    "ParameterError",
    "ParameterProblem",
    "validate_parameters",
]


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
}

_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0"})


@attrs.frozen
class Parameter:
    """
    The declaration of one instance parameter.

    :ivar name: the key in the instance's C{params}, spelled as XSOAR spells it
        where the integration has an XSOAR counterpart.
    :ivar kind: one of C{str}, C{int}, C{float}, C{bool}, C{list} (of strings)
        or C{mapping}. Strings such as C{"true"} or C{"42"} are accepted for
        C{bool}, C{int} and C{float}, since XSOAR stores every parameter as text.
    :ivar default: the value used when the parameter is absent; C{None} means
        absent values stay C{None}.
    :ivar required: the parameter must be given.
    :ivar choices: the accepted values, if only some are.
    :ivar secret: the value is a credential: it is never logged and is masked
        wherever parameters are shown.
    :ivar minimum: the smallest accepted number, for C{int} and C{float}.
    :ivar description: what the parameter does, for C{xsoar-lr check} and the
        documentation.
    """

    name: str
    kind: str = attrs.field(
        default="str", validator=attrs.validators.in_(sorted(_KINDS))
    )
    default: Any = None
    required: bool = False
    choices: tuple[Any, ...] = ()
    secret: bool = False
    minimum: float | None = None
    description: str = ""

    def coerce(self, value: Any) -> Any:
        """
        Turn a configured value into the declared kind.

        :raises ValueError: with a sentence that says what was expected.
        """
        if self.kind == "bool" and isinstance(value, str):
            word = value.strip().lower()
            if word in _TRUE_WORDS:
                return True
            if word in _FALSE_WORDS:
                return False
            raise ValueError(f"expected true or false, not {value!r}")
        if self.kind in ("int", "float") and isinstance(value, str):
            try:
                value = int(value) if self.kind == "int" else float(value)
            except ValueError:
                raise ValueError(f"expected a number, not {value!r}") from None
        if self.kind == "list" and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, bool) and self.kind in ("int", "float"):
            raise ValueError(f"expected a number, not {value!r}")
        if not isinstance(value, _KINDS[self.kind]):
            raise ValueError(f"expected a value of kind {self.kind}, not {value!r}")
        if self.kind == "list":
            value = [str(item) for item in value]
        if self.choices and value not in self.choices:
            accepted = ", ".join(repr(c) for c in self.choices)
            raise ValueError(f"{value!r} is not one of {accepted}")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{value!r} is less than {self.minimum!r}")
        return value


def validate_parameters(
    schema: Sequence[Parameter], params: Mapping[str, Any]
) -> dict[str, Any]:
    """
    Check C{params} against C{schema} and fill in the defaults.

    :returns: the validated parameters, one key per declared parameter.
    :raises ParameterError: listing every unknown, missing or bad parameter.
    """
    declared = {p.name: p for p in schema}
    problems = [
        ParameterProblem(
            name,
            f"Parameter {name!r} is not a parameter of this integration; "
            f"the known ones are: {', '.join(sorted(declared)) or 'none'}.",
        )
        for name in params
        if name not in declared
    ]
    result: dict[str, Any] = {}
    for parameter in schema:
        if parameter.name not in params or params[parameter.name] is None:
            if parameter.required:
                problems.append(
                    ParameterProblem(
                        parameter.name,
                        f"Parameter {parameter.name!r} is required; set it "
                        "under the instance's params.",
                    )
                )
            result[parameter.name] = parameter.default
            continue
        try:
            result[parameter.name] = parameter.coerce(params[parameter.name])
        except ValueError as e:
            problems.append(
                ParameterProblem(
                    parameter.name, f"Parameter {parameter.name!r}: {e}."
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
    display.
    """
    secret = {p.name for p in schema if p.secret}
    return {
        key: ("********" if key in secret and value else value)
        for key, value in params.items()
    }


@attrs.define
class InstanceContext:
    """
    What an instance's code is given when it is built.

    :ivar name: the instance's name, exactly as configured.
    :ivar integration: the id of the instance's integration.
    :ivar params: the validated parameters, one key per declared parameter.
    :ivar state_dir: a folder that belongs to this instance alone and
        survives restarts.
    :ivar route: the path the gateway publishes the instance at (for example
        C{/instance/execute/edl}), or C{None} when it is not routed.
    :ivar reactor: the reactor to use; never import the global one.
    :ivar log: a logger whose events name the instance.
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

    @property
    def store(self) -> IndicatorStore:
        """
        The indicator store, opened on first use.
        """
        if self._store is None:
            self._store = self._open_store()
        return self._store


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


@implementer(IPlugin, IIntegration)
@attrs.frozen
class Integration:
    """
    A lazily loaded integration: the module named by C{module} is imported
    only when the integration is used, so that registering it costs nothing
    at plugin scan time.

    The module defines C{PARAMETERS} and C{make_resource(context)}, and may
    define C{make_service(context)} and C{check(params)}.
    """

    id: str
    module: str
    display_name: str
    description: str = ""

    def _module(self) -> Any:
        return importlib.import_module(self.module)

    def parameters(self) -> Sequence[Parameter]:
        return tuple(self._module().PARAMETERS)

    def validate(self, params: Mapping[str, Any]) -> dict[str, Any]:
        module = self._module()
        result = validate_parameters(module.PARAMETERS, params)
        check = getattr(module, "check", None)
        if check is not None:
            problems = check(result)
            if problems:
                raise ParameterError(problems)
        return result

    def make_resource(self, context: InstanceContext) -> IResource:
        resource: IResource = self._module().make_resource(context)
        return resource

    def make_service(self, context: InstanceContext) -> IService | None:
        factory = getattr(self._module(), "make_service", None)
        return None if factory is None else factory(context)


def find_integrations() -> dict[str, IIntegration]:
    """
    Return every installed integration, by id.
    """
    from twisted.plugin import getPlugins

    import twisted.plugins

    return {i.id: i for i in getPlugins(IIntegration, twisted.plugins)}
