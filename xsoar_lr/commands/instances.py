"""
C{xsoar-lr instances}: work with configured instances.

C{xsoar-lr instances update NAME} asks an EDL or Export Indicators instance in
on-demand mode to rebuild its list (XSOAR's C{export-indicators-list-update}).
The request is written to the instance's state folder, so it is honoured
even if the instance is not running yet or restarts in between; the
instance rebuilds its list on the next request it serves.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

__all__ = ["add_commands"]

#: The integrations that keep a list, and the modules that define them.
LIST_INTEGRATIONS = {
    "edl": "integrations.edl",
    "export-indicators": "integrations.export_indicators",
}

# Command-line option -> (setting name in the integration's flavour, kind).
_OPTIONS: dict[str, tuple[str, str]] = {
    "query": ("query", "str"),
    "format": ("format", "str"),
    "size": ("size", "int"),
    "mwg_type": ("mwg_type", "str"),
    "strip_port": ("strip_port", "bool"),
    "strip_protocol": ("strip_protocol", "bool"),
    "drop_invalids": ("drop_invalids", "bool"),
    "collapse_ips": ("collapse", "str"),
    "category_default": ("category_default", "str"),
    "category_attribute": ("category_attribute", "str"),
    "csv_text": ("csv_text", "bool"),
    "add_comment_if_empty": ("add_comment", "bool"),
    "fields_filter": ("fields", "str"),
    "truncate": ("truncate", "bool"),
    "sort_field": ("sort_field", "str"),
    "sort_order": ("sort_order", "str"),
}


def add_commands(subparsers: Any) -> None:
    """
    Add C{instances update} to the command line.
    """
    instances = subparsers.add_parser(
        "instances",
        help="work with configured instances",
        description="Work with the configured integration instances.",
    )
    commands = instances.add_subparsers(dest="instances_command", metavar="SUBCOMMAND")
    commands.required = True
    update = commands.add_parser(
        "update",
        help="ask an on-demand EDL or Export Indicators instance to rebuild its list",
        description="Ask an EDL or Export Indicators instance whose 'on_demand' "
        "parameter is true to rebuild its list (XSOAR's "
        "export-indicators-list-update). Options left out keep the instance's "
        "parameters. The request is kept in the instance's state folder and is "
        "honoured on the next request the instance serves, also after a restart.",
    )
    update.add_argument("name", metavar="NAME", help="the instance's name")
    update.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help="the configuration file (default: the embedded one)",
    )
    update.add_argument("--query", help="the indicator query")
    update.add_argument(
        "--format",
        help="the output format, as the 'format' "
        "parameter spells it (for example 'PAN-OS (text)')",
    )
    update.add_argument("--size", type=int, help="the most entries of the list")
    update.add_argument(
        "--offset", type=int, default=None, help="how many entries to skip first"
    )
    update.add_argument("--mwg-type", dest="mwg_type", help="McAfee Web Gateway type")
    update.add_argument(
        "--collapse-ips",
        dest="collapse_ips",
        help="Don't Collapse, To Ranges or To CIDRS",
    )
    update.add_argument(
        "--category-default", dest="category_default", help="ProxySG default category"
    )
    update.add_argument(
        "--category-attribute",
        dest="category_attribute",
        help="ProxySG listed categories, comma-separated",
    )
    update.add_argument(
        "--fields-filter", dest="fields_filter", help="CSV and JSON exported fields"
    )
    update.add_argument(
        "--sort-field", dest="sort_field", help="sort field (Export Indicators)"
    )
    update.add_argument(
        "--sort-order", dest="sort_order", help="asc or desc (Export Indicators)"
    )
    for flag, helptext in (
        ("strip-port", "strip ports from URLs"),
        ("strip-protocol", "strip protocols from URLs"),
        ("drop-invalids", "drop invalid URL entries"),
        ("csv-text", "serve CSV as text/plain"),
        ("add-comment-if-empty", "serve '# Empty List' for an empty list"),
        ("truncate", "truncate URLs to 254 characters"),
    ):
        update.add_argument(
            f"--{flag}",
            dest=flag.replace("-", "_"),
            action=argparse.BooleanOptionalAction,
            default=None,
            help=helptext,
        )
    update.set_defaults(handler=update_instance)


def _format_choice(flavour: Any, name: str) -> str:
    """
    The format parameter's value for a format named as the C{v} URL argument
    names it (C{json}, C{mwg}, ...), so that both spellings work here too.
    """
    if name in flavour.format_choices:
        return name
    wanted = flavour.formats.get(name)
    for choice in flavour.format_choices:
        if wanted is not None and flavour.formats.get(choice) == wanted:
            return str(choice)
    return name


def update_instance(args: argparse.Namespace) -> int:
    """
    Record an update request for an on-demand list instance.
    """
    from integrations.lists import ondemand
    from xsoar_lr.api import ParameterError, validate_parameters
    from xsoar_lr.cli import CommandError, load_config_or_fail

    config = load_config_or_fail(args.config)
    try:
        instance = config.instance(args.name)
    except KeyError:
        names = ", ".join(i.name for i in config.instances) or "none"
        raise CommandError(
            f"There is no instance named {args.name!r} in the configuration; the "
            f"instances are: {names}."
        ) from None
    module_name = LIST_INTEGRATIONS.get(instance.integration)
    if module_name is None:
        raise CommandError(
            f"Instance {args.name!r} is a {instance.integration!r} instance; only "
            f"{' and '.join(LIST_INTEGRATIONS)} instances keep a list to update."
        )
    if not instance.params.get("on_demand"):
        raise CommandError(
            f"Instance {args.name!r} does not update on demand: its list is rebuilt "
            "by itself whenever its refresh rate passes or the indicators change. "
            "Set 'on_demand: true' in its params to update it with this command."
        )
    module = importlib.import_module(module_name)
    names = module.FLAVOUR.param_names

    given: dict[str, Any] = {}
    for option, (setting, _kind) in _OPTIONS.items():
        value = getattr(args, option, None)
        if value is None:
            continue
        if setting not in names:
            raise CommandError(
                f"Option --{option.replace('_', '-')} does not apply to "
                f"{instance.integration} instances."
            )
        if option == "format":
            value = _format_choice(module.FLAVOUR, value)
        given[names[setting]] = value
    try:
        checked = validate_parameters(
            [p for p in module.PARAMETERS if p.name in given], given
        )
    except ParameterError as e:
        raise CommandError(
            "The update was not recorded: " + " ".join(p.message for p in e.problems)
        ) from None
    problems = module.check({**instance.params, **checked})
    if problems:
        raise CommandError(
            "The update was not recorded: " + " ".join(p.message for p in problems)
        )
    if args.offset is not None:
        if args.offset < 0:
            raise CommandError("Option --offset must not be negative.")
        checked["offset"] = args.offset

    ondemand.write_request(config.instance_state_dir(args.name), checked)
    print(
        f"Instance {args.name!r} will rebuild its list on the next request it serves."
    )
    query = checked.get("indicators_query", instance.params.get("indicators_query"))
    if not query:
        print(
            "Warning: no indicator query is set, so the list will hold every "
            "indicator of the store (up to its size)."
        )
    return 0
