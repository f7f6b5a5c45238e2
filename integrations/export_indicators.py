"""
The C{export-indicators} integration: XSOAR's Export Indicators Service.

Everything the EDL does (see L{integrations.edl}), with the parameter names
of XSOAR's Export Indicators Service, plus MineMeld-style C{csv}, C{json}
and C{json-seq}, XSOAR C{json}, C{json-seq} and C{csv}, C{panosurl}, and
sorting (C{sf}, C{so}). All the work is done by L{integrations.lists}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.web.resource import Resource

from integrations.edl import ARGUMENTS as EDL_ARGUMENTS
from integrations.edl import PARAM_NAMES as EDL_PARAM_NAMES
from integrations.lists.instance import (
    check_parameters,
    list_parameters,
    make_list_resource,
)
from integrations.lists.settings import Flavour, Format
from xsoar_lr.api import InstanceContext, Parameter, ParameterProblem

__all__ = ["FLAVOUR", "PARAMETERS", "check", "make_resource"]

FORMAT_CHOICES = (
    "text",
    "json",
    "json-seq",
    "csv",
    "XSOAR json",
    "XSOAR json-seq",
    "XSOAR csv",
    "McAfee Web Gateway",
    "Symantec ProxySG",
    "PAN-OS URL",
    "PAN-OS (text)",
    "CSV",
    "JSON",
)

#: How Export Indicators spells its formats, parameters, arguments and headers.
FLAVOUR = Flavour(
    integration="export-indicators",
    formats={
        "text": Format.PLAIN_TEXT,
        "json": Format.MINEMELD_JSON,
        "json-seq": Format.MINEMELD_JSON_SEQ,
        "csv": Format.MINEMELD_CSV,
        "XSOAR json": Format.XSOAR_JSON,
        "xsoar-json": Format.XSOAR_JSON,
        "XSOAR json-seq": Format.XSOAR_JSON_SEQ,
        "xsoar-seq": Format.XSOAR_JSON_SEQ,
        "XSOAR csv": Format.XSOAR_CSV,
        "xsoar-csv": Format.XSOAR_CSV,
        "McAfee Web Gateway": Format.MWG,
        "mwg": Format.MWG,
        "Symantec ProxySG": Format.PROXYSG,
        "proxysg": Format.PROXYSG,
        "bluecoat": Format.PROXYSG,
        "PAN-OS URL": Format.PANOS_URL,
        "panosurl": Format.PANOS_URL,
        "PAN-OS (text)": Format.PANOS_TEXT,
        "CSV": Format.CSV,
        "JSON": Format.JSON,
    },
    format_choices=FORMAT_CHOICES,
    # The EDL's names, but for the two settings named differently here, and
    # sorting, which only this integration has.
    param_names={
        **EDL_PARAM_NAMES,
        "size": "list_size",
        "strip_port": "strip_port",
        "sort_field": "sort_field",
        "sort_order": "sort_order",
    },
    arguments=(*EDL_ARGUMENTS, "sf", "so"),
    header_prefix="X-ExportIndicators-",
    list_name="Export Indicators list",
)

PARAMETERS = list_parameters(
    size_name="list_size",
    size_default=10000,
    strip_port_name="strip_port",
    strip_port_default=False,
    format_choices=FORMAT_CHOICES,
    format_default="text",
    collapse_choices=("Don't Collapse", "To CIDRs", "To CIDRS", "To Ranges"),
    refresh_default="5 minutes",
    extra=(
        Parameter(
            "sort_field",
            "str",
            "",
            description="The indicator field the "
            "list is sorted by; empty keeps the store's order (by value).",
        ),
        Parameter(
            "sort_order",
            "str",
            "asc",
            choices=("asc", "desc"),
            description="Sort order: asc or desc.",
        ),
    ),
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
