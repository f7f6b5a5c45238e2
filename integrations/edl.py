"""
The C{edl} integration: XSOAR's Generic Export Indicators Service (EDL).

It serves the indicators of the store that match a query as a list for
PAN-OS firewalls and web proxies, in PAN-OS text, CSV, JSON, McAfee Web
Gateway or Symantec ProxySG format. Parameters and URL arguments are named
as XSOAR names them, so an XSOAR instance configuration and the URLs
firewalls poll carry over. All the work is done by L{integrations.lists}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.web.resource import Resource

from integrations.lists.instance import (
    check_parameters,
    list_parameters,
    make_list_resource,
)
from integrations.lists.settings import Flavour, Format
from xsoar_lr.api import InstanceContext, ParameterProblem

__all__ = ["FLAVOUR", "PARAMETERS", "check", "make_resource"]

FORMAT_CHOICES = (
    "PAN-OS (text)",
    "CSV",
    "JSON",
    "McAfee Web Gateway",
    "Symantec ProxySG",
)

#: How the EDL names the list settings in its parameters (setting: name).
PARAM_NAMES = {
    "query": "indicators_query",
    "size": "edl_size",
    "format": "format",
    "fields": "fields_filter",
    "mwg_type": "mwg_type",
    "strip_port": "url_port_stripping",
    "strip_protocol": "url_protocol_stripping",
    "truncate": "url_truncate",
    "drop_invalids": "drop_invalids",
    "collapse": "collapse_ips",
    "category_default": "category_default",
    "category_attribute": "category_attribute",
    "csv_text": "csv_text",
    "add_comment": "add_comment_if_empty",
    "max_cidr": "maximum_cidr_size",
    "no_wildcard_tld": "no_wildcard_tld",
    "enforce_ascii": "enforce_ascii",
    "prepend": "prepend_string",
    "append": "append_string",
}

#: The URL arguments the EDL accepts.
ARGUMENTS = (
    "n",
    "s",
    "v",
    "q",
    "t",
    "sp",
    "pr",
    "di",
    "tr",
    "cd",
    "ca",
    "tx",
    "ce",
    "fi",
    "ut",
    "mc",
    "nt",
    "nocache",
)

#: How the EDL spells its formats, parameters, arguments and headers.
FLAVOUR = Flavour(
    integration="edl",
    formats={
        "PAN-OS (text)": Format.PANOS_TEXT,
        "text": Format.PANOS_TEXT,
        "CSV": Format.CSV,
        "csv": Format.CSV,
        "JSON": Format.JSON,
        "json": Format.JSON,
        "McAfee Web Gateway": Format.MWG,
        "mwg": Format.MWG,
        "Symantec ProxySG": Format.PROXYSG,
        "proxysg": Format.PROXYSG,
        "bluecoat": Format.PROXYSG,
    },
    format_choices=FORMAT_CHOICES,
    param_names=PARAM_NAMES,
    arguments=ARGUMENTS,
    header_prefix="X-EDL-",
    list_name="EDL",
)

PARAMETERS = list_parameters(
    size_name="edl_size",
    size_default=2500,
    strip_port_name="url_port_stripping",
    strip_port_default=True,
    format_choices=FORMAT_CHOICES,
    format_default="PAN-OS (text)",
    collapse_choices=("Don't Collapse", "To CIDRS", "To Ranges"),
    refresh_default="30 minutes",
)


def check(params: Mapping[str, Any]) -> list[ParameterProblem]:
    """
    Check the rules that span parameters (credentials in pairs, the refresh
    rate, the query).
    """
    return check_parameters(FLAVOUR, params)


def make_resource(context: InstanceContext) -> Resource:
    """
    Build the resource that serves the instance's list at C{/} and its build
    log at C{/log}.
    """
    return make_list_resource(context, FLAVOUR)
