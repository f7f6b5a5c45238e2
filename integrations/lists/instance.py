"""
What the two list integrations have in common at the level of an instance:
their parameter declarations, the cross-parameter checks and the assembly
of the web resource from an L{InstanceContext}.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from integrations.lists.auth import BasicCredentials
from integrations.lists.cache import ListCache, OnDemandList
from integrations.lists.resource import ListResource
from integrations.lists.settings import (
    MWG_TYPES,
    ArgumentError,
    Flavour,
    ListSettings,
    parse_refresh_rate,
    settings_from_params,
)
from xsoar_lr.api import InstanceContext, Parameter, ParameterProblem
from xsoar_lr.indicators import Indicator

__all__ = [
    "CARRIED_OVER",
    "check_parameters",
    "credentials_from",
    "list_parameters",
    "make_list_resource",
    "settings_for_update",
]

#: XSOAR parameters that have no meaning here; they are accepted so that an
#: XSOAR configuration carries over unchanged, and do nothing.
CARRIED_OVER = (
    "longRunning",
    "longRunningPort",
    "hsts_header",
    "page_size",
    "nginx_global_directives",
    "nginx_server_conf",
    "timeout",
    "use_legacy_query",
    "extensive_logging",
)


def list_parameters(
    *,
    size_name: str,
    size_default: int,
    strip_port_name: str,
    strip_port_default: bool,
    format_choices: Sequence[str],
    format_default: str,
    collapse_choices: Sequence[str],
    refresh_default: str,
    extra: Sequence[Parameter] = (),
) -> tuple[Parameter, ...]:
    """
    The parameter declarations of a list integration, with the names that
    differ between XSOAR's EDL and Export Indicators passed in.
    """
    bool_ = "bool"
    return (
        Parameter(
            "on_demand",
            bool_,
            False,
            description="Update list on demand only: "
            "the list is rebuilt only by 'xsoar-lr instances update'.",
        ),
        Parameter(
            "indicators_query",
            "str",
            "",
            description="Indicator Query, in "
            "XSOAR's query syntax; empty means every indicator.",
        ),
        Parameter(
            "format",
            "str",
            format_default,
            choices=tuple(format_choices),
            description="Outbound Format.",
        ),
        Parameter(
            "fields_filter",
            "str",
            "",
            description="Exported Fields of CSV and "
            "JSON lists: a comma-separated list of names, or 'all'; empty means "
            "value and type.",
        ),
        Parameter(
            size_name,
            "int",
            size_default,
            minimum=0,
            description="List Size: the most entries a list holds.",
        ),
        Parameter(
            "cache_refresh_rate",
            "str",
            refresh_default,
            description="Refresh "
            "Rate, as '<number> <unit>' (for example '30 minutes'): how long a "
            "built list is reused and the max-age of responses.",
        ),
        Parameter(
            "credentials",
            "mapping",
            None,
            secret=True,
            description="Username "
            "and password of the list, as {identifier: ..., password: ...}; "
            "without them the list is open.",
        ),
        Parameter(
            "add_comment_if_empty",
            bool_,
            True,
            description="Add comment to "
            "empty list: serve '# Empty List' rather than nothing.",
        ),
        Parameter(
            strip_port_name,
            bool_,
            strip_port_default,
            description="Strip ports from URLs.",
        ),
        Parameter(
            "url_protocol_stripping",
            bool_,
            True,
            description="Strip protocols from URLs.",
        ),
        Parameter(
            "url_truncate", bool_, False, description="Truncate URLs to 254 characters."
        ),
        Parameter(
            "enforce_ascii",
            bool_,
            False,
            description="Enforce ASCII only: drop values with other characters.",
        ),
        Parameter(
            "prepend_string",
            "str",
            "",
            description="Prepend string to text lists; '\\n' stands for a line break.",
        ),
        Parameter(
            "append_string",
            "str",
            "",
            description="Append string to text lists; '\\n' stands for a line break.",
        ),
        Parameter(
            "collapse_ips",
            "str",
            "Don't Collapse",
            choices=tuple(collapse_choices),
            description="IP Collapsing of text lists.",
        ),
        Parameter(
            "maximum_cidr_size",
            "int",
            8,
            minimum=0,
            description="Maximum CIDR "
            "network prefix bits size: networks with a shorter prefix are dropped "
            "from text lists.",
        ),
        Parameter(
            "no_wildcard_tld",
            bool_,
            False,
            description="Exclude top level "
            "domainGlobs such as *.com and *.co.uk from text lists.",
        ),
        Parameter(
            "drop_invalids",
            bool_,
            False,
            description="PAN-OS: drop invalid URL entries.",
        ),
        Parameter(
            "mwg_type",
            "str",
            "string",
            choices=MWG_TYPES,
            description="McAfee Gateway: Indicator List Type.",
        ),
        Parameter(
            "category_default",
            "str",
            "bc_category",
            description="Symantec ProxySG: Default Category.",
        ),
        Parameter(
            "category_attribute",
            "str",
            "",
            description="Symantec ProxySG: "
            "Listed Categories, comma-separated; empty keeps every category.",
        ),
        Parameter(
            "csv_text",
            bool_,
            False,
            description="Show CSV format as Text (text/plain).",
        ),
        *extra,
        Parameter(
            "certificate",
            "str",
            None,
            secret=True,
            description="Not used: TLS "
            "is terminated by the gateway. Setting it is an error.",
        ),
        Parameter(
            "key",
            "str",
            None,
            secret=True,
            description="Not used: TLS is "
            "terminated by the gateway. Setting it is an error.",
        ),
        *(
            Parameter(
                name,
                "str",
                None,
                description="Accepted so that an XSOAR "
                "configuration carries over; it has no effect here.",
            )
            for name in CARRIED_OVER
        ),
    )


def credentials_from(params: Mapping[str, Any]) -> BasicCredentials | None:
    """
    The list's credentials, or C{None} when none are set.
    """
    value = params.get("credentials") or {}
    username = str(value.get("identifier") or "")
    password = str(value.get("password") or "")
    if not username and not password:
        return None
    return BasicCredentials(username, password)


def check_parameters(
    flavour: Flavour, params: Mapping[str, Any]
) -> list[ParameterProblem]:
    """
    The rules that span parameters or need more than a type check.
    """
    from xsoar_lr.query import compile_query

    problems: list[ParameterProblem] = []
    credentials = params.get("credentials") or {}
    unknown = sorted(set(credentials) - {"identifier", "password"})
    if unknown:
        problems.append(
            ParameterProblem(
                "credentials",
                (
                    f"Parameter 'credentials' has unknown keys {', '.join(unknown)}; it takes "
                    "'identifier' (the user name) and 'password'."
                ),
            )
        )
    if bool(credentials.get("identifier")) != bool(credentials.get("password")):
        problems.append(
            ParameterProblem(
                "credentials",
                (
                    "Parameter 'credentials': if using credentials, both the user name "
                    "('identifier') and the password should be provided."
                ),
            )
        )
    for name in ("certificate", "key"):
        if params.get(name):
            problems.append(
                ParameterProblem(
                    name,
                    (
                        f"Parameter {name!r} is not used: the gateway terminates TLS for "
                        "routed instances. Remove it, and reach the list through the gateway "
                        "route for HTTPS."
                    ),
                )
            )
    try:
        parse_refresh_rate(str(params.get("cache_refresh_rate") or ""))
    except ValueError as e:
        problems.append(
            ParameterProblem(
                "cache_refresh_rate", f"Parameter 'cache_refresh_rate': {e}."
            )
        )
    try:
        compile_query(str(params.get("indicators_query") or ""))
    except ValueError as e:
        problems.append(
            ParameterProblem("indicators_query", f"Parameter 'indicators_query': {e}")
        )
    try:
        settings_from_params(flavour, params)
    except ArgumentError as e:
        problems.append(ParameterProblem(e.argument, str(e)))
    return problems


def settings_for_update(
    flavour: Flavour, params: Mapping[str, Any], update: Mapping[str, Any]
) -> ListSettings:
    """
    The settings of an on-demand list: the instance's parameters changed by
    the parameters of an update request (which may also hold C{offset}).
    """
    changed = dict(update)
    offset = int(changed.pop("offset", 0) or 0)
    merged = {**params, **changed}
    return attrs.evolve(settings_from_params(flavour, merged), offset=offset)


def make_list_resource(context: InstanceContext, flavour: Flavour) -> ListResource:
    """
    Build the resource that serves an instance's list.
    """
    from xsoar_lr.query import compile_query

    params = context.params
    store = context.store
    refresh = parse_refresh_rate(str(params["cache_refresh_rate"]))

    def indicators(settings: ListSettings) -> Iterable[Indicator]:
        return store.search(
            settings.query,
            sort_field=settings.sort_field or "value",
            descending=settings.descending,
        )

    source: ListCache | OnDemandList
    if params.get("on_demand"):
        source = OnDemandList(
            reactor=context.reactor,
            state_dir=context.state_dir,
            indicators=indicators,
            settings_for=lambda update: settings_for_update(flavour, params, update),
            list_name=flavour.list_name,
        )
    else:
        source = ListCache(
            reactor=context.reactor,
            directory=context.state_dir / "lists",
            indicators=indicators,
            generation=store.generation,
            refresh_seconds=refresh,
            list_name=flavour.list_name,
        )
    context.log.info(
        "Serving the {mode} list of instance {name}",
        mode="on-demand" if params.get("on_demand") else "periodic",
        name=context.name,
    )
    return ListResource(
        flavour=flavour,
        base=settings_from_params(flavour, params),
        source=source,
        refresh_seconds=refresh,
        credentials=credentials_from(params),
        check_query=compile_query,
    )
