"""
The host's configuration: one YAML file of integration instances, the
gateway and the XSOAR server parameters.

L{load_config} reads and checks the whole file before anything starts. Every
problem is reported at once, each with the file, the line, the instance and
the key, so that one run of C{xsoar-lr check} is enough to fix a file.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import netaddr
import yaml

from xsoar_lr.api import IIntegration, ParameterError

__all__ = [
    "Config",
    "ConfigError",
    "GatewayConfig",
    "InstanceConfig",
    "Problem",
    "RouteConfig",
    "default_state_dir",
    "is_routed",
    "load_config",
    "parse_server_flag",
    "route_for",
]

EXTERNAL = "instance.execute.external"
ROUTE_PREFIX = "/instance/execute/"
_EXTERNAL_PREFIX = EXTERNAL + "."

#: The label used for the embedded default configuration in messages.
EMBEDDED = "<embedded default configuration>"


@attrs.frozen
class Problem:
    """
    One thing wrong with a configuration file.

    :ivar source: the file's path, or L{EMBEDDED}.
    :ivar line: the 1-based line the problem is on, if known.
    :ivar message: a full sentence naming the instance and key, and what to do.
    """

    source: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """
    A configuration file cannot be used. C{str()} is the full report.

    :ivar problems: every problem found.
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(self.report())

    def report(self) -> str:
        """
        Every problem, one per line, after a line that counts them.
        """
        count = len(self.problems)
        head = f"The configuration has {count} problem{'s' if count != 1 else ''}:"
        return "\n".join([head] + [f"  {p}" for p in self.problems])


DEFAULT_LISTEN = "ssl:8443"
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_RESPONSE_TIMEOUT = 120.0
DEFAULT_MAX_BODY_SIZE = 10 * 1024 * 1024
DEFAULT_MAX_CONCURRENT_REQUESTS = 100
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_MAX_HEADER_BYTES = 16384
DEFAULT_MAX_HEADERS = 100
DEFAULT_AUTH_FAILURE_LIMIT = 10
DEFAULT_AUTH_FAILURE_WINDOW = 60.0
DEFAULT_AUTH_FAILURE_BLOCK = 300.0


@attrs.frozen
class RouteConfig:
    """
    How the gateway treats the requests of one route: limits, timeouts and
    access control. An instance's C{route:} mapping overrides the defaults
    given in the C{gateway:} section.

    :ivar connect_timeout: seconds to wait for a connection to the instance.
    :ivar response_timeout: seconds to wait for the instance's response
        headers once the request body is sent, before answering C{504}.
    :ivar max_body_size: the largest request body in bytes; larger ones get
        C{413} before the body is read.
    :ivar max_concurrent_requests: how many requests may be in progress at
        once; more get C{503}.
    :ivar allow: the client networks that may use the route, or C{None} for
        every client.
    :ivar require_client_certificate: whether a client must present a
        certificate signed by the gateway's C{client_ca}.
    """

    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    response_timeout: float = DEFAULT_RESPONSE_TIMEOUT
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS
    allow: tuple[netaddr.IPNetwork, ...] | None = None
    require_client_certificate: bool = False


DEFAULT_SHUTDOWN_GRACE = 10.0


@attrs.frozen
class AccessLogConfig:
    """
    An access log file in the combined log format, rotated by size.

    :ivar path: the file; rotated copies get C{.1}, C{.2}, ... after it.
    :ivar max_bytes: the size at which the file is rotated.
    :ivar keep: how many rotated copies are kept.
    """

    path: Path
    max_bytes: int = 10 * 1024 * 1024
    keep: int = 5


@attrs.frozen
class GatewayConfig:
    """
    The gateway: the TLS site that publishes routed instances.

    :ivar listen: a Twisted server endpoint description, such as C{ssl:8443}.
        C{ssl:} is served with the gateway's own certificate; other stream
        endpoints (C{tcp:}, C{tcp6:}, C{systemd:}, C{unix:}) are wrapped in
        TLS the same way.
    :ivar certificate: a PEM file with the certificate and its chain, or
        C{None} for a certificate the host makes itself.
    :ivar private_key: the PEM private key for C{certificate}.
    :ivar connect_timeout: seconds to wait for a connection to an instance.
    :ivar response_timeout: seconds to wait for an instance's response
        headers before answering C{504}.
    :ivar route: the defaults of every instance's route settings (the
        C{gateway:} keys C{connect_timeout}, C{response_timeout},
        C{max_body_size}, C{max_concurrent_requests}, C{allow} and
        C{require_client_certificate}).
    :ivar trusted_proxies: the front proxies whose C{X-Forwarded-For} the
        gateway extends instead of replacing.
    :ivar idle_timeout: seconds a client connection may stay silent.
    :ivar header_timeout: seconds a client has to send a request's complete
        headers (against slowloris).
    :ivar max_header_bytes: the largest request line plus headers, in bytes.
    :ivar max_headers: the most header lines in one request.
    :ivar hsts: the C{Strict-Transport-Security} max-age in seconds, or 0 to
        send none.
    :ivar client_ca: a PEM file of the certificate authorities that sign
        client certificates, for routes that require one.
    :ivar auth_failure_limit: how many C{401} answers one client address may
        get from one instance within C{auth_failure_window} seconds before
        it is answered C{429} for C{auth_failure_block} seconds; 0 turns
        throttling off.
    :ivar auth_failure_window: see C{auth_failure_limit}.
    :ivar auth_failure_block: see C{auth_failure_limit}.
    """

    listen: str = DEFAULT_LISTEN
    certificate: Path | None = None
    private_key: Path | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    response_timeout: float = DEFAULT_RESPONSE_TIMEOUT
    route: RouteConfig = attrs.Factory(
        lambda self: RouteConfig(
            connect_timeout=self.connect_timeout,
            response_timeout=self.response_timeout,
        ),
        takes_self=True,
    )
    trusted_proxies: tuple[netaddr.IPNetwork, ...] = ()
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_headers: int = DEFAULT_MAX_HEADERS
    hsts: int = 0
    client_ca: Path | None = None
    auth_failure_limit: int = DEFAULT_AUTH_FAILURE_LIMIT
    auth_failure_window: float = DEFAULT_AUTH_FAILURE_WINDOW
    auth_failure_block: float = DEFAULT_AUTH_FAILURE_BLOCK
    access_log: AccessLogConfig | None = None
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE

    @property
    def port(self) -> int | None:
        """
        The TCP port the gateway listens on, when the description names one.
        """
        return listen_port(self.listen)


@attrs.frozen
class InstanceConfig:
    """
    One configured instance of an integration.

    :ivar name: the instance's name: case-sensitive, any printable
        characters but C{/}.
    :ivar integration: the id of an installed integration.
    :ivar port: the instance's own listening port.
    :ivar interface: the address the instance listens on.
    :ivar certificate: a PEM certificate, for an instance that serves HTTPS
        itself (only when it is not routed).
    :ivar private_key: the key for C{certificate}.
    :ivar params: the integration's parameters, validated, defaults filled in.
    :ivar route: how the gateway treats requests to this instance: its
        C{route:} mapping over the gateway's defaults.
    """

    name: str
    integration: str
    port: int
    interface: str = "127.0.0.1"
    certificate: Path | None = None
    private_key: Path | None = None
    params: Mapping[str, Any] = attrs.field(factory=dict)
    route: RouteConfig = attrs.field(factory=RouteConfig)
    access_log: AccessLogConfig | None = None


DEFAULT_MANAGEMENT_LISTEN = "tcp:9180:interface=127.0.0.1"
DEFAULT_ACCESS_LOG_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_ACCESS_LOG_KEEP = 5


@attrs.frozen
class ManagementConfig:
    """
    The management site: C{/health}, C{/status} and C{/metrics}.

    :ivar listen: a Twisted server endpoint description; loopback by
        default, since the site has no authentication of its own.
    """

    listen: str = DEFAULT_MANAGEMENT_LISTEN


@attrs.frozen
class Config:
    """
    A checked configuration.

    :ivar source: the file it was read from, or L{EMBEDDED}.
    :ivar state_dir: where the host keeps its certificate, the indicator
        database and each instance's state.
    :ivar gateway: the gateway's settings.
    :ivar server_params: the XSOAR server parameters, with booleans as
        values.
    :ivar instances: the instances, in file order.
    :ivar feeds: the feeds the host pulls into the indicator store.
    :ivar warnings: things that are allowed but probably not meant.
    """

    source: str
    state_dir: Path
    gateway: GatewayConfig
    server_params: Mapping[str, bool]
    instances: tuple[InstanceConfig, ...]
    feeds: tuple[Any, ...] = ()
    management: ManagementConfig | None = None
    warnings: tuple[str, ...] = ()

    def instance(self, name: str) -> InstanceConfig:
        """
        The instance with exactly this name.

        :raises KeyError: when there is none.
        """
        for instance in self.instances:
            if instance.name == name:
                return instance
        raise KeyError(name)

    def instance_state_dir(self, name: str) -> Path:
        """
        The folder that belongs to the named instance, which survives restarts.
        """
        return self.state_dir / "instances" / _file_name(name)

    @property
    def store_path(self) -> Path:
        """
        The indicator store's database file.
        """
        return self.state_dir / "indicators.sqlite3"

    def is_routed(self, name: str) -> bool:
        """
        Whether the server parameters publish the named instance.
        """
        return is_routed(self.server_params, name)

    @property
    def routed_instances(self) -> tuple[InstanceConfig, ...]:
        """
        The instances the gateway publishes, in file order.
        """
        return tuple(i for i in self.instances if self.is_routed(i.name))


def is_routed(server_params: Mapping[str, bool], name: str) -> bool:
    """
    Apply XSOAR's rule: C{instance.execute.external.<name>} decides for that
    instance when it is set; otherwise C{instance.execute.external} decides;
    otherwise the instance is not routed. Names are case-sensitive.
    """
    specific = server_params.get(_EXTERNAL_PREFIX + name)
    if specific is not None:
        return specific
    return server_params.get(EXTERNAL, False)


def route_for(name: str) -> str:
    """
    The path at which the gateway publishes the named instance, with the
    name percent-encoded as a browser would send it.
    """
    return ROUTE_PREFIX + quote(name, safe="")


def parse_server_flag(value: Any) -> bool:
    """
    Read a server parameter's value: a YAML boolean, or the strings C{true} or
    C{false} in any case.

    :raises ValueError: for anything else.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(value)


def default_state_dir() -> Path:
    """
    The per-user state folder used when the configuration names none:
    C{$XDG_STATE_HOME/xsoar-lr}, or C{~/.local/state/xsoar-lr}.
    """
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "xsoar-lr"


def listen_port(description: str) -> int | None:
    """
    The TCP port in an endpoint description, or C{None} when it has none
    (C{systemd:}, C{unix:}) or the description is malformed.
    """
    kind, positional, keywords = split_description(description)
    if kind not in ("ssl", "tcp", "tcp6"):
        return None
    raw = keywords.get("port", positional[0] if positional else None)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def split_description(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    Split an endpoint description into its kind, positional arguments and
    keyword arguments, honouring backslash escapes as Twisted does.
    """
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    kind, arguments = parts[0], parts[1:]
    positional = [a for a in arguments if "=" not in a]
    keywords = dict(a.split("=", 1) for a in arguments if "=" in a)
    return kind, positional, keywords


def _file_name(name: str) -> str:
    """
    A file name for an instance name: letters, digits, C{-} and C{_} are kept
    and every other byte is percent-encoded, so that no name (not C{..}, not
    one with spaces) can leave the instances folder.
    """
    return "".join(
        chr(b)
        if chr(b).isascii() and (chr(b).isalnum() or chr(b) in "-_")
        else f"%{b:02X}"
        for b in name.encode("utf-8")
    )


# Reading YAML with line numbers.


class _Mapping(dict[Any, Any]):
    """
    A YAML mapping that remembers the line of itself and of each key.
    """

    line: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines: dict[Any, int] = {}


class _Loader(yaml.SafeLoader):
    """
    A safe YAML loader whose mappings remember their lines and which refuses
    duplicate keys (plain PyYAML keeps the last one silently).
    """

    duplicates: list[tuple[int, Any]]

    def construct_mapping(
        self, node: yaml.MappingNode, deep: bool = False
    ) -> dict[Any, Any]:
        self.flatten_mapping(node)
        mapping = _Mapping()
        mapping.line = node.start_mark.line + 1
        mapping.key_lines = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if key in mapping:
                self.duplicates.append((key_node.start_mark.line + 1, key))
            mapping[key] = self.construct_object(value_node, deep=True)  # type: ignore[no-untyped-call]
            mapping.key_lines[key] = key_node.start_mark.line + 1
        return mapping


_Loader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _Loader.construct_mapping,  # type: ignore[arg-type]
)


def _line(mapping: Any, key: Any = None) -> int | None:
    if not isinstance(mapping, _Mapping):
        return None
    if key is not None and key in mapping.key_lines:
        return mapping.key_lines[key]
    return mapping.line


# Checking.

_TOP_KEYS = (
    "state_dir",
    "gateway",
    "server_params",
    "instances",
    "feeds",
    "management",
)
_MANAGEMENT_KEYS = ("listen",)
_ROUTE_KEYS = (
    "connect_timeout",
    "response_timeout",
    "max_body_size",
    "max_concurrent_requests",
    "allow",
    "require_client_certificate",
)
_GATEWAY_KEYS = (
    "listen",
    "certificate",
    "private_key",
    *_ROUTE_KEYS,
    "trusted_proxies",
    "idle_timeout",
    "header_timeout",
    "max_header_bytes",
    "max_headers",
    "hsts",
    "client_ca",
    "auth_failure_limit",
    "auth_failure_window",
    "auth_failure_block",
    "access_log",
    "shutdown_grace",
)
_INSTANCE_KEYS = (
    "name",
    "integration",
    "port",
    "interface",
    "certificate",
    "private_key",
    "params",
    "route",
    "access_log",
)
_ACCESS_LOG_KEYS = ("path", "max_bytes", "keep")
_LISTEN_KINDS = ("ssl", "tcp", "tcp6", "systemd", "unix")
_SSL_OPTIONS_OF_OURS = ("privateKey", "certKey", "extraCertChain", "sslmethod")


@attrs.define
class _Checker:
    """
    Collects the problems of one file while it is turned into a L{Config}.
    """

    source: str
    base: Path
    integrations: Mapping[str, IIntegration]
    problems: list[Problem] = attrs.Factory(list)
    warnings: list[str] = attrs.Factory(list)
    certificate_lines: dict[str, int | None] = attrs.Factory(dict)
    route_defaults: RouteConfig = attrs.Factory(RouteConfig)
    has_client_ca: bool = False

    def problem(self, line: int | None, message: str) -> None:
        self.problems.append(Problem(self.source, line, message))

    def warn(self, line: int | None, message: str) -> None:
        self.warnings.append(str(Problem(self.source, line, message)))

    def unknown_keys(
        self, mapping: Mapping[Any, Any], known: Sequence[str], where: str
    ) -> None:
        for key in mapping:
            if key in known:
                continue
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            self.problem(
                _line(mapping, key),
                f"{where}: unknown key {key!r}; the known keys are "
                f"{', '.join(known)}.{hint}",
            )

    def path(self, value: Any, line: int | None, where: str) -> Path | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self.problem(line, f"{where} must be a file path, not {value!r}.")
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base / path

    def number(
        self,
        mapping: Mapping[str, Any],
        key: str,
        where: str,
        default: float,
    ) -> float:
        value = mapping.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            self.problem(
                _line(mapping, key),
                f"{where}: {key!r} must be a positive number of seconds, not "
                f"{value!r}.",
            )
            return default
        return float(value)

    def whole(
        self,
        mapping: Mapping[str, Any],
        key: str,
        where: str,
        default: int,
        minimum: int,
        what: str,
    ) -> int:
        value = mapping.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.problem(
                _line(mapping, key),
                f"{where}: {key!r} must be a whole number of {what} from "
                f"{minimum} up, not {value!r}.",
            )
            return default
        return value

    def flag(
        self, mapping: Mapping[str, Any], key: str, where: str, default: bool
    ) -> bool:
        value = mapping.get(key, default)
        if not isinstance(value, bool):
            self.problem(
                _line(mapping, key),
                f"{where}: {key!r} must be true or false, not {value!r}.",
            )
            return default
        return value

    def networks(
        self, mapping: Mapping[str, Any], key: str, where: str
    ) -> tuple[netaddr.IPNetwork, ...] | None:
        """
        A list of IP addresses and CIDR networks, such as C{[10.0.0.0/8,
        192.0.2.7]}, or C{None} when the key is absent.
        """
        if key not in mapping or mapping[key] is None:
            return None
        raw = mapping[key]
        line = _line(mapping, key)
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list):
            self.problem(
                line,
                f"{where}: {key!r} must be a list of IP addresses or networks "
                f"such as [10.0.0.0/8, 192.0.2.7], not {raw!r}.",
            )
            return None
        result = []
        for item in raw:
            try:
                if not isinstance(item, str) or not item.strip():
                    raise ValueError(item)
                result.append(netaddr.IPNetwork(item.strip()))
            except (ValueError, TypeError, netaddr.AddrFormatError):
                self.problem(
                    line,
                    f"{where}: {key!r} holds {item!r}, which is not an IP "
                    "address or a network in CIDR form such as 10.0.0.0/8; "
                    "quote each entry as a string.",
                )
        return tuple(result)

    def route(
        self, mapping: Mapping[str, Any], where: str, defaults: RouteConfig
    ) -> RouteConfig:
        """
        The route settings in C{mapping} over C{defaults}.
        """
        allow = self.networks(mapping, "allow", where)
        if mapping.get("allow") == []:
            self.problem(
                _line(mapping, "allow"),
                f"{where}: 'allow' is empty, so no client could use the route; "
                "list the networks that may, or remove the key to allow all.",
            )
        return RouteConfig(
            connect_timeout=self.number(
                mapping, "connect_timeout", where, defaults.connect_timeout
            ),
            response_timeout=self.number(
                mapping, "response_timeout", where, defaults.response_timeout
            ),
            max_body_size=self.whole(
                mapping, "max_body_size", where, defaults.max_body_size, 0, "bytes"
            ),
            max_concurrent_requests=self.whole(
                mapping,
                "max_concurrent_requests",
                where,
                defaults.max_concurrent_requests,
                1,
                "requests",
            ),
            allow=allow if "allow" in mapping else defaults.allow,
            require_client_certificate=self.flag(
                mapping,
                "require_client_certificate",
                where,
                defaults.require_client_certificate,
            ),
        )

    def pem_pair(
        self,
        mapping: Mapping[str, Any],
        where: str,
    ) -> tuple[Path | None, Path | None]:
        certificate = self.path(
            mapping.get("certificate"),
            _line(mapping, "certificate"),
            f"{where}: 'certificate'",
        )
        private_key = self.path(
            mapping.get("private_key"),
            _line(mapping, "private_key"),
            f"{where}: 'private_key'",
        )
        if (certificate is None) != (private_key is None):
            self.problem(
                _line(mapping),
                f"{where}: 'certificate' and 'private_key' go together; set both "
                "or neither.",
            )
            return None, None
        if certificate is not None and private_key is not None:
            from xsoar_lr.tls import TLSMaterialError, load_pem_pair

            try:
                load_pem_pair(certificate, private_key)
            except TLSMaterialError as e:
                self.problem(_line(mapping, "certificate"), f"{where}: {e}")
        return certificate, private_key

    def gateway(self, raw: Any) -> GatewayConfig:
        if raw is None:
            return GatewayConfig()
        if not isinstance(raw, Mapping):
            self.problem(None, f"'gateway' must be a mapping, not {raw!r}.")
            return GatewayConfig()
        self.unknown_keys(raw, _GATEWAY_KEYS, "gateway")
        listen = raw.get("listen", DEFAULT_LISTEN)
        line = _line(raw, "listen")
        if not isinstance(listen, str):
            self.problem(
                line,
                f"gateway: 'listen' must be an endpoint description such as "
                f'"ssl:8443", not {listen!r}.',
            )
            listen = DEFAULT_LISTEN
        else:
            self.listen(listen, line)
        certificate, private_key = self.pem_pair(raw, "gateway")
        route = self.route(raw, "gateway", RouteConfig())
        self.route_defaults = route
        client_ca = self.client_ca(raw)
        self.has_client_ca = client_ca is not None
        if route.require_client_certificate and client_ca is None:
            self.problem(
                _line(raw, "require_client_certificate"),
                "gateway: 'require_client_certificate' needs 'client_ca', the "
                "PEM file of the authorities that sign client certificates.",
            )
        hsts = self.whole(raw, "hsts", "gateway", 0, 0, "seconds")
        access_log = self.access_log(raw, "gateway")
        return GatewayConfig(
            access_log=access_log,
            shutdown_grace=self.number(
                raw, "shutdown_grace", "gateway", DEFAULT_SHUTDOWN_GRACE
            ),
            listen=listen,
            certificate=certificate,
            private_key=private_key,
            connect_timeout=route.connect_timeout,
            response_timeout=route.response_timeout,
            route=route,
            trusted_proxies=self.networks(raw, "trusted_proxies", "gateway") or (),
            idle_timeout=self.number(
                raw, "idle_timeout", "gateway", DEFAULT_IDLE_TIMEOUT
            ),
            header_timeout=self.number(
                raw, "header_timeout", "gateway", DEFAULT_HEADER_TIMEOUT
            ),
            max_header_bytes=self.whole(
                raw,
                "max_header_bytes",
                "gateway",
                DEFAULT_MAX_HEADER_BYTES,
                1024,
                "bytes",
            ),
            max_headers=self.whole(
                raw, "max_headers", "gateway", DEFAULT_MAX_HEADERS, 1, "headers"
            ),
            hsts=hsts,
            client_ca=client_ca,
            auth_failure_limit=self.whole(
                raw,
                "auth_failure_limit",
                "gateway",
                DEFAULT_AUTH_FAILURE_LIMIT,
                0,
                "answers",
            ),
            auth_failure_window=self.number(
                raw, "auth_failure_window", "gateway", DEFAULT_AUTH_FAILURE_WINDOW
            ),
            auth_failure_block=self.number(
                raw, "auth_failure_block", "gateway", DEFAULT_AUTH_FAILURE_BLOCK
            ),
        )

    def client_ca(self, raw: Mapping[str, Any]) -> Path | None:
        path = self.path(
            raw.get("client_ca"), _line(raw, "client_ca"), "gateway: 'client_ca'"
        )
        if path is None:
            return None
        from xsoar_lr.tls import TLSMaterialError, load_certificates

        try:
            load_certificates(path)
        except TLSMaterialError as e:
            self.problem(_line(raw, "client_ca"), f"gateway: 'client_ca': {e}")
        return path

    def listen(self, description: str, line: int | None) -> None:
        kind, positional, keywords = split_description(description)
        if kind not in _LISTEN_KINDS:
            self.problem(
                line,
                f"gateway: 'listen' {description!r} is not a server endpoint "
                f"this gateway can serve TLS on; start it with one of "
                f"{', '.join(k + ':' for k in _LISTEN_KINDS)} (for example "
                '"ssl:8443").',
            )
            return
        ours = sorted(set(keywords) & set(_SSL_OPTIONS_OF_OURS))
        if ours:
            self.problem(
                line,
                f"gateway: 'listen' sets {', '.join(ours)}; give the PEM files "
                "as gateway 'certificate' and 'private_key' instead.",
            )
        if kind in ("ssl", "tcp", "tcp6"):
            port = listen_port(description)
            if port is None or not 0 <= port <= 65535:
                self.problem(
                    line,
                    f"gateway: 'listen' {description!r} has no valid port; "
                    'write it as "ssl:PORT" with PORT from 1 to 65535.',
                )

    def server_params(self, raw: Any, names: Sequence[str]) -> dict[str, bool]:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            self.problem(None, f"'server_params' must be a mapping, not {raw!r}.")
            return {}
        result: dict[str, bool] = {}
        for key, value in raw.items():
            line = _line(raw, key)
            if not isinstance(key, str) or not (
                key == EXTERNAL or key.startswith(_EXTERNAL_PREFIX)
            ):
                self.problem(
                    line,
                    f"server_params: unknown key {key!r}; the gateway reads "
                    f"{EXTERNAL!r} and '{_EXTERNAL_PREFIX}<instance name>'.",
                )
                continue
            try:
                result[key] = parse_server_flag(value)
            except ValueError:
                self.problem(
                    line,
                    f"server_params: {key!r} must be true or false, not {value!r}.",
                )
                continue
            if key != EXTERNAL:
                self.orphan_server_param(key, line, names)
        return result

    def orphan_server_param(
        self, key: str, line: int | None, names: Sequence[str]
    ) -> None:
        name = key[len(_EXTERNAL_PREFIX) :]
        if name in names:
            return
        same_but_case = [n for n in names if n.lower() == name.lower()]
        hint = (
            f" Instance names are case-sensitive: did you mean "
            f"'{_EXTERNAL_PREFIX}{same_but_case[0]}'?"
            if same_but_case
            else ""
        )
        self.warn(line, f"server_params: {key!r} names no instance.{hint}")

    def instances(self, raw: Any, gateway_port: int | None) -> list[InstanceConfig]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.problem(None, f"'instances' must be a list, not {raw!r}.")
            return []
        result = []
        names: dict[str, int | None] = {}
        ports: dict[int, str] = {}
        for index, entry in enumerate(raw, 1):
            instance = self.instance(entry, index)
            if instance is None:
                continue
            line = _line(entry)
            if instance.name in names:
                self.problem(
                    _line(entry, "name"),
                    f"instance {instance.name!r}: the name is already used at "
                    f"line {names[instance.name]}; instance names must be unique.",
                )
            names[instance.name] = line
            if instance.port == 0:
                # Its port was reported as invalid already.
                continue
            if instance.port in ports:
                self.problem(
                    _line(entry, "port"),
                    f"instance {instance.name!r}: port {instance.port} is already "
                    f"used by instance {ports[instance.port]!r}; give each "
                    "instance its own port.",
                )
            elif gateway_port is not None and instance.port == gateway_port:
                self.problem(
                    _line(entry, "port"),
                    f"instance {instance.name!r}: port {instance.port} is the "
                    "gateway's port; choose another.",
                )
            ports.setdefault(instance.port, instance.name)
            result.append(instance)
        return result

    def instance(self, entry: Any, index: int) -> InstanceConfig | None:
        if not isinstance(entry, Mapping):
            self.problem(
                None, f"instances: entry {index} must be a mapping, not {entry!r}."
            )
            return None
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            self.problem(
                _line(entry, "name"),
                f"instances: entry {index} needs a 'name' (a non-empty string).",
            )
            return None
        where = f"instance {name!r}"
        if "/" in name or not name.isprintable():
            self.problem(
                _line(entry, "name"),
                f"{where}: a name may hold any printable characters but '/'.",
            )
        self.unknown_keys(entry, _INSTANCE_KEYS, where)

        port = entry.get("port")
        if (
            isinstance(port, bool)
            or not isinstance(port, int)
            or not (1 <= port <= 65535)
        ):
            self.problem(
                _line(entry, "port"),
                f"{where}: 'port' is missing; give the instance a port of its "
                "own, from 1 to 65535."
                if port is None
                else f"{where}: 'port' must be a whole number from 1 to 65535, "
                f"not {port!r}.",
            )
            port = 0

        interface = entry.get("interface", "127.0.0.1")
        try:
            ipaddress.ip_address(interface)
        except ValueError:
            self.problem(
                _line(entry, "interface"),
                f"{where}: 'interface' must be an IP address such as 127.0.0.1, "
                f"not {interface!r}.",
            )
        certificate, private_key = self.pem_pair(entry, where)
        self.certificate_lines[name] = _line(entry, "certificate")
        params = self.params(entry, where)
        return InstanceConfig(
            name=name,
            integration=str(entry.get("integration")),
            port=port,
            interface=str(interface),
            certificate=certificate,
            private_key=private_key,
            params=params,
            route=self.instance_route(entry, where),
            access_log=self.access_log(entry, where),
        )

    def instance_route(self, entry: Mapping[str, Any], where: str) -> RouteConfig:
        raw = entry.get("route")
        if raw is None:
            return self.route_defaults
        if not isinstance(raw, Mapping):
            self.problem(
                _line(entry, "route"),
                f"{where}: 'route' must be a mapping of route settings such as "
                "{max_body_size: 1048576}, not " + repr(raw) + ".",
            )
            return self.route_defaults
        self.unknown_keys(raw, _ROUTE_KEYS, f"{where}: route")
        route = self.route(raw, f"{where}: route", self.route_defaults)
        if raw.get("require_client_certificate") is True and not self.has_client_ca:
            # Inherited from the gateway, the problem is reported there.
            self.problem(
                _line(raw, "require_client_certificate"),
                f"{where}: route: 'require_client_certificate' needs the "
                "gateway's 'client_ca', the PEM file of the authorities that "
                "sign client certificates.",
            )
        return route

    def params(self, entry: Mapping[str, Any], where: str) -> dict[str, Any]:
        integration_id = entry.get("integration")
        raw = entry.get("params")
        if raw is None:
            raw = {}
        elif not isinstance(raw, Mapping):
            self.problem(
                _line(entry, "params"), f"{where}: 'params' must be a mapping."
            )
            raw = {}
        integration = self.integrations.get(str(integration_id))
        if integration is None:
            known = ", ".join(sorted(self.integrations)) or "none"
            self.problem(
                _line(entry, "integration"),
                f"{where}: 'integration' is missing; the installed integrations "
                f"are: {known}."
                if integration_id is None
                else f"{where}: 'integration' {integration_id!r} is not installed; "
                f"the installed integrations are: {known}.",
            )
            return dict(raw)
        try:
            return integration.validate(raw)
        except ImportError as e:
            self.problem(
                _line(entry, "integration"),
                f"{where}: integration {integration_id!r} is installed but its "
                f"code cannot be loaded ({e}); reinstall the package that "
                "provides it.",
            )
            return dict(raw)
        except ParameterError as e:
            for p in e.problems:
                self.problem(
                    _line(raw, p.parameter) or _line(entry, "params"),
                    f"{where}: {p.message}",
                )
            return dict(raw)

    def access_log(
        self, mapping: Mapping[str, Any], where: str
    ) -> AccessLogConfig | None:
        raw = mapping.get("access_log")
        if raw is None:
            return None
        line = _line(mapping, "access_log")
        if isinstance(raw, str):
            raw = {"path": raw}
        if not isinstance(raw, Mapping):
            self.problem(
                line,
                f"{where}: 'access_log' must be a file path or a mapping with "
                f"path, max_bytes and keep, not {raw!r}.",
            )
            return None
        self.unknown_keys(raw, _ACCESS_LOG_KEYS, f"{where}: access_log")
        path = self.path(raw.get("path"), line, f"{where}: access_log 'path'")
        if path is None:
            self.problem(line, f"{where}: 'access_log' needs a 'path'.")
            return None
        if not path.parent.is_dir():
            self.problem(
                line,
                f"{where}: the folder of the access log {str(path)!r} does not "
                "exist; create it or choose another path.",
            )
        return AccessLogConfig(
            path=path,
            max_bytes=self.whole(
                raw,
                "max_bytes",
                f"{where}: access_log",
                DEFAULT_ACCESS_LOG_MAX_BYTES,
                1024,
                "bytes",
            ),
            keep=self.whole(
                raw, "keep", f"{where}: access_log", DEFAULT_ACCESS_LOG_KEEP, 0, "files"
            ),
        )

    def management(self, raw: Any) -> ManagementConfig | None:
        if raw is None:
            return None
        if raw is True or raw == {}:
            return ManagementConfig()
        if not isinstance(raw, Mapping):
            self.problem(
                None,
                "'management' must be a mapping such as "
                f'{{listen: "{DEFAULT_MANAGEMENT_LISTEN}"}}, not {raw!r}.',
            )
            return None
        self.unknown_keys(raw, _MANAGEMENT_KEYS, "management")
        listen = raw.get("listen", DEFAULT_MANAGEMENT_LISTEN)
        kind = split_description(listen)[0] if isinstance(listen, str) else None
        if kind not in ("tcp", "tcp6", "unix", "systemd"):
            self.problem(
                _line(raw, "listen"),
                f"management: 'listen' must be an endpoint description such as "
                f'"{DEFAULT_MANAGEMENT_LISTEN}", not {listen!r}.',
            )
            return None
        return ManagementConfig(listen=listen)

    def feeds(self, raw: Any) -> tuple[Any, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.problem(None, f"'feeds' must be a list, not {raw!r}.")
            return ()
        from xsoar_lr.feeds import parse_feed

        result = []
        for index, entry in enumerate(raw, 1):
            if not isinstance(entry, Mapping):
                self.problem(
                    None, f"feeds: entry {index} must be a mapping, not {entry!r}."
                )
                continue

            def report(key: str | None, message: str, entry: Any = entry) -> None:
                self.problem(_line(entry, key), message)

            feed = parse_feed(entry, report)
            if feed is not None:
                result.append(feed)
        return tuple(result)


def load_config(
    path: str | os.PathLike[str] | None,
    integrations: Mapping[str, IIntegration] | None = None,
) -> Config:
    """
    Read and check a configuration file.

    :param path: the YAML file, or C{None} for the embedded default
        configuration (an C{edl} instance on port 7000, routed, and the
        gateway on C{ssl:8443} on 127.0.0.1).
    :param integrations: the installed integrations by id; by default those
        found through Twisted's plugin system.
    :raises ConfigError: listing every problem in the file.
    """
    if path is None:
        source = EMBEDDED
        text = resources.files("xsoar_lr").joinpath("default.yaml").read_text("utf-8")
        base = Path.cwd()
    else:
        source = os.fspath(path)
        try:
            text = Path(path).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(
                [Problem(source, None, f"The configuration file cannot be read: {e}.")]
            ) from None
        base = Path(path).resolve().parent
    return parse_config(text, source, base, integrations)


def parse_config(
    text: str,
    source: str,
    base: Path,
    integrations: Mapping[str, IIntegration] | None = None,
) -> Config:
    """
    Check the text of a configuration file; see L{load_config}.

    :param base: the folder that relative paths in the file start from.
    """
    if integrations is None:
        from xsoar_lr.api import find_integrations

        integrations = find_integrations()
    loader = _Loader(text)
    loader.duplicates = []
    try:
        raw = loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = None if mark is None else mark.line + 1
        reason = getattr(e, "problem", None) or str(e)
        raise ConfigError(
            [Problem(source, line, f"This is not valid YAML: {reason}.")]
        ) from None
    finally:
        loader.dispose()

    checker = _Checker(source=source, base=base, integrations=integrations)
    for line, key in loader.duplicates:
        checker.problem(line, f"The key {key!r} is given twice; keep one.")
    if raw is None:
        raw = _Mapping()
    if not isinstance(raw, Mapping):
        raise ConfigError(
            [Problem(source, None, "The file must hold a mapping of settings.")]
        )
    checker.unknown_keys(raw, _TOP_KEYS, "the top level")

    state_dir = checker.path(
        raw.get("state_dir"), _line(raw, "state_dir"), "'state_dir'"
    )
    gateway = checker.gateway(raw.get("gateway"))
    instances = checker.instances(raw.get("instances"), gateway.port)
    server_params = checker.server_params(
        raw.get("server_params"), [i.name for i in instances]
    )
    for instance in instances:
        if instance.certificate is not None and is_routed(server_params, instance.name):
            checker.problem(
                checker.certificate_lines.get(instance.name),
                f"instance {instance.name!r}: it is routed through the gateway "
                "and also has a certificate, but the gateway reaches instances "
                "over plain HTTP; remove the instance's certificate and "
                "private_key, or stop routing it.",
            )
    feeds = checker.feeds(raw.get("feeds"))
    management = checker.management(raw.get("management"))
    if management is not None:
        port = listen_port(management.listen)
        if port is not None and port != 0:
            taken = {i.port: f"instance {i.name!r}" for i in instances}
            if gateway.port is not None:
                taken[gateway.port] = "the gateway"
            if port in taken:
                checker.problem(
                    _line(raw.get("management"), "listen"),
                    f"management: port {port} is already used by {taken[port]}; "
                    "choose another.",
                )
    for instance in instances:
        if instance.name in (".", ".."):
            checker.warn(
                None,
                f"instance {instance.name!r}: browsers, curl and most HTTP "
                "libraries remove dot segments from paths, so its route "
                f"{route_for(instance.name)} is reachable only by clients that "
                "send the path as it is; choose another name.",
            )
    if checker.problems:
        # Reported in file order, so the report reads along with the file.
        raise ConfigError(sorted(checker.problems, key=lambda p: p.line or 0))
    return Config(
        source=source,
        state_dir=state_dir if state_dir is not None else default_state_dir(),
        gateway=gateway,
        server_params=server_params,
        instances=tuple(instances),
        feeds=feeds,
        management=management,
        warnings=tuple(checker.warnings),
    )


def read_state_dir(path: str | os.PathLike[str] | None) -> Path:
    """
    The state folder a configuration names, read without checking the rest
    of the file, so that commands which only need to find a running host
    (C{xsoar-lr reload}, C{status}) work while the file has problems.

    :raises ConfigError: when the file cannot be read or is not YAML.
    """
    if path is None:
        return default_state_dir()
    source = os.fspath(path)
    try:
        raw = yaml.safe_load(Path(path).read_text("utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            [Problem(source, None, f"The configuration file cannot be read: {e}.")]
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(
            [Problem(source, None, f"This is not valid YAML: {e}.")]
        ) from None
    value = raw.get("state_dir") if isinstance(raw, Mapping) else None
    if not isinstance(value, str) or not value:
        return default_state_dir()
    state_dir = Path(value).expanduser()
    return (
        state_dir
        if state_dir.is_absolute()
        else Path(path).resolve().parent / state_dir
    )
