"""
URL arguments and parameters turned into list settings: the one flag rule,
every argument, the errors that name the argument and its accepted values,
and the refresh rate.
"""

from __future__ import annotations

import pytest

from integrations import edl, export_indicators
from integrations.lists.auth import BasicCredentials
from integrations.lists.settings import (
    ArgumentError,
    Collapse,
    Format,
    ListSettings,
    apply_arguments,
    parse_flag,
    parse_refresh_rate,
    settings_from_params,
)
from xsoar_lr.api import ParameterError, validate_parameters

BASE = ListSettings()


def apply(
    query: dict[str, str], flavour=edl.FLAVOUR, base: ListSettings = BASE
) -> ListSettings:
    return apply_arguments(flavour, base, {k: [v] for k, v in query.items()})[0]


@pytest.mark.parametrize("value", ["", "true", "TRUE", "1", "yes", "on", " Yes "])
def test_flag_on(value: str) -> None:
    assert parse_flag("sp", value) is True


@pytest.mark.parametrize("value", ["false", "False", "0", "no", "off"])
def test_flag_off(value: str) -> None:
    assert parse_flag("sp", value) is False


def test_bad_flag_names_argument_and_values() -> None:
    with pytest.raises(ArgumentError) as caught:
        parse_flag("di", "maybe")
    assert caught.value.argument == "di"
    assert str(caught.value) == (
        "Argument 'di' must be a flag, not 'maybe'. Accepted values: no value (as in "
        "'?sp'), true, 1, yes or on to turn it on; false, 0, no or off to turn it off."
    )


@pytest.mark.parametrize(
    "argument, setting",
    [
        ("sp", "strip_port"),
        ("pr", "strip_protocol"),
        ("di", "drop_invalids"),
        ("tx", "csv_text"),
        ("ce", "add_comment"),
        ("ut", "truncate"),
        ("nt", "no_wildcard_tld"),
    ],
)
def test_every_flag_argument_follows_the_rule(argument: str, setting: str) -> None:
    off = ListSettings(**{setting: False})
    on = ListSettings(**{setting: True})
    assert getattr(apply({argument: ""}, base=off), setting) is True
    assert getattr(apply({argument: "true"}, base=off), setting) is True
    assert getattr(apply({argument: "false"}, base=on), setting) is False
    assert getattr(apply({argument: "0"}, base=on), setting) is False
    with pytest.raises(ArgumentError, match=f"Argument '{argument}'"):
        apply({argument: "sometimes"})


def test_bare_pr_turns_on_protocol_stripping_only() -> None:
    settings = apply(
        {"pr": ""}, base=ListSettings(strip_port=False, strip_protocol=False)
    )
    assert settings.strip_protocol is True
    assert settings.strip_port is False


def test_numbers() -> None:
    settings = apply({"n": "5", "s": "2", "mc": "16"})
    assert (settings.size, settings.offset, settings.max_cidr) == (5, 2, 16)
    for argument in ("n", "s", "mc"):
        for bad in ("x", "-1", "1.5"):
            with pytest.raises(ArgumentError) as caught:
                apply({argument: bad})
            assert str(caught.value) == (
                f"Argument '{argument}' must be a whole number of at least 0, not {bad!r}."
            )


@pytest.mark.parametrize(
    "name, expected",
    [
        ("PAN-OS (text)", Format.PANOS_TEXT),
        ("text", Format.PANOS_TEXT),
        ("CSV", Format.CSV),
        ("csv", Format.CSV),
        ("JSON", Format.JSON),
        ("json", Format.JSON),
        ("McAfee Web Gateway", Format.MWG),
        ("mwg", Format.MWG),
        ("Symantec ProxySG", Format.PROXYSG),
        ("proxysg", Format.PROXYSG),
        ("bluecoat", Format.PROXYSG),
    ],
)
def test_edl_format_names(name: str, expected: Format) -> None:
    assert apply({"v": name}).format is expected


@pytest.mark.parametrize(
    "name, expected",
    [
        ("text", Format.PLAIN_TEXT),
        ("json", Format.MINEMELD_JSON),
        ("json-seq", Format.MINEMELD_JSON_SEQ),
        ("csv", Format.MINEMELD_CSV),
        ("xsoar-json", Format.XSOAR_JSON),
        ("XSOAR json", Format.XSOAR_JSON),
        ("xsoar-seq", Format.XSOAR_JSON_SEQ),
        ("xsoar-csv", Format.XSOAR_CSV),
        ("mwg", Format.MWG),
        ("bluecoat", Format.PROXYSG),
        ("panosurl", Format.PANOS_URL),
        ("PAN-OS URL", Format.PANOS_URL),
        ("PAN-OS (text)", Format.PANOS_TEXT),
        ("CSV", Format.CSV),
        ("JSON", Format.JSON),
    ],
)
def test_export_indicators_format_names(name: str, expected: Format) -> None:
    assert apply({"v": name}, flavour=export_indicators.FLAVOUR).format is expected


def test_unknown_format_lists_accepted_names() -> None:
    with pytest.raises(ArgumentError) as caught:
        apply({"v": "xml"})
    assert caught.value.argument == "v"
    assert "unknown format 'xml'" in str(caught.value)
    assert "'PAN-OS (text)', 'text', 'CSV'" in str(caught.value)


def test_empty_q_and_v_keep_the_parameters() -> None:
    base = ListSettings(query="type:IP", format=Format.JSON)
    assert apply({"q": "", "v": ""}, base=base) == base


def test_other_arguments() -> None:
    settings = apply(
        {
            "q": "type:URL",
            "t": "category",
            "tr": "2",
            "cd": "blocked",
            "ca": "a, b",
            "fi": "value,score",
        }
    )
    assert settings.query == "type:URL"
    assert settings.mwg_type == "category"
    assert settings.collapse is Collapse.CIDRS
    assert settings.category_default == "blocked"
    assert settings.category_attribute == ("a", "b")
    assert settings.fields == ("value", "score")
    assert apply({"tr": "1"}).collapse is Collapse.RANGES
    assert apply({"tr": "To CIDRS"}).collapse is Collapse.CIDRS
    assert (
        apply({"tr": "0"}, base=ListSettings(collapse=Collapse.RANGES)).collapse
        is Collapse.NONE
    )
    assert apply({"fi": "ALL"}).fields == ("all",)
    with pytest.raises(ArgumentError, match="Argument 'tr' must be 0"):
        apply({"tr": "3"})
    with pytest.raises(
        ArgumentError, match="Argument 't' must be a McAfee Web Gateway"
    ):
        apply({"t": "words"})


def test_sorting_only_for_export_indicators() -> None:
    ei = export_indicators.FLAVOUR
    settings = apply({"sf": "lastseen", "so": "desc"}, flavour=ei)
    assert (settings.sort_field, settings.descending) == ("lastSeen", True)
    assert apply({"sf": "value", "so": "desc"}) == BASE
    with pytest.raises(
        ArgumentError, match="Argument 'sf' names an unknown sort field"
    ):
        apply({"sf": "colour"}, flavour=ei)
    with pytest.raises(ArgumentError, match="Argument 'so' must be asc or desc"):
        apply({"so": "up"}, flavour=ei)


def test_unknown_arguments_are_ignored_and_last_value_counts() -> None:
    settings, rebuild = apply_arguments(
        edl.FLAVOUR, BASE, {"zz": ["1"], "n": ["3", "4"], "nocache": ["1"]}
    )
    assert settings.size == 4
    assert rebuild is True


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("30 minutes", 1800),
        ("1 minute", 60),
        ("5 Hours", 18000),
        ("2 days", 172800),
        ("1 month", 2592000),
        ("1 year", 31536000),
        ("10 seconds", 10),
        (" 3 weeks ", 1814400),
    ],
)
def test_refresh_rate(text: str, seconds: int) -> None:
    assert parse_refresh_rate(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "minutes", "30 fortnights", "-1 minute"])
def test_bad_refresh_rate(text: str) -> None:
    with pytest.raises(ValueError, match="'<number> <unit>'"):
        parse_refresh_rate(text)


def test_edl_parameters_map_to_settings() -> None:
    params = validate_parameters(
        edl.PARAMETERS,
        {
            "indicators_query": "type:URL",
            "edl_size": "7",
            "format": "JSON",
            "fields_filter": "name,type,score",
            "url_port_stripping": "false",
            "url_protocol_stripping": False,
            "url_truncate": True,
            "drop_invalids": "yes",
            "collapse_ips": "To CIDRS",
            "category_default": "c",
            "category_attribute": "x,y",
            "csv_text": True,
            "add_comment_if_empty": False,
            "maximum_cidr_size": 12,
            "no_wildcard_tld": True,
            "enforce_ascii": True,
            "prepend_string": "a\\nb",
            "append_string": "z",
            "mwg_type": "regex",
        },
    )
    assert settings_from_params(edl.FLAVOUR, params) == ListSettings(
        query="type:URL",
        size=7,
        format=Format.JSON,
        fields=("name", "type", "score"),
        strip_port=False,
        strip_protocol=False,
        truncate=True,
        drop_invalids=True,
        collapse=Collapse.CIDRS,
        category_default="c",
        category_attribute=("x", "y"),
        csv_text=True,
        add_comment=False,
        max_cidr=12,
        no_wildcard_tld=True,
        enforce_ascii=True,
        prepend="a\nb",
        append="z",
        mwg_type="regex",
    )


def test_edl_defaults_match_xsoar() -> None:
    params = validate_parameters(edl.PARAMETERS, {})
    assert params["edl_size"] == 2500
    assert params["cache_refresh_rate"] == "30 minutes"
    assert settings_from_params(edl.FLAVOUR, params) == ListSettings()


def test_export_indicators_parameters() -> None:
    params = validate_parameters(
        export_indicators.PARAMETERS,
        {
            "list_size": 3,
            "strip_port": True,
            "collapse_ips": "To CIDRs",
            "format": "panosurl" if False else "PAN-OS URL",
            "sort_field": "score",
            "sort_order": "desc",
        },
    )
    settings = settings_from_params(export_indicators.FLAVOUR, params)
    assert (settings.size, settings.strip_port, settings.collapse) == (
        3,
        True,
        Collapse.CIDRS,
    )
    assert (settings.format, settings.sort_field, settings.descending) == (
        Format.PANOS_URL,
        "score",
        True,
    )
    defaults = validate_parameters(export_indicators.PARAMETERS, {})
    assert (
        defaults["list_size"] == 10000 and defaults["cache_refresh_rate"] == "5 minutes"
    )
    assert (
        settings_from_params(export_indicators.FLAVOUR, defaults).format
        is Format.PLAIN_TEXT
    )


def test_xsoar_only_parameters_carry_over() -> None:
    params = validate_parameters(
        edl.PARAMETERS,
        {
            "longRunningPort": "7000",
            "page_size": "2000",
            "nginx_server_conf": "x",
            "timeout": "3600",
            "hsts_header": "true",
            "use_legacy_query": "false",
        },
    )
    assert edl.check(params) == []


def test_check_reports_each_problem() -> None:
    params = validate_parameters(
        edl.PARAMETERS,
        {
            "credentials": {"identifier": "user"},
            "cache_refresh_rate": "soon",
            "indicators_query": "type:(",
            "certificate": "PEM",
        },
    )
    problems = {p.parameter: p.message for p in edl.check(params)}
    assert set(problems) == {
        "credentials",
        "cache_refresh_rate",
        "indicators_query",
        "certificate",
    }
    assert (
        "both the user name ('identifier') and the password" in problems["credentials"]
    )
    assert problems["certificate"].startswith("Parameter 'certificate' is not used")
    with pytest.raises(ParameterError, match="'format'"):
        validate_parameters(edl.PARAMETERS, {"format": "text"})
    problems = export_indicators.check(
        validate_parameters(export_indicators.PARAMETERS, {"sort_field": "colour"})
    )
    assert [p.parameter for p in problems] == ["sort_field"]


@pytest.mark.parametrize(
    "header, accepted",
    [
        ("Basic dXNlcjpwd2Q=", True),  # user:pwd
        ("basic dXNlcjpwd2Q=", True),
        ("Basic YTpiOmM=", False),  # a:b:c
        ("Basic dXNlcjpwd2Q", False),  # bad padding
        ("Basic !!!", False),
        ("Bearer dXNlcjpwd2Q=", False),
        ("Basic dXNlcg==", False),  # no colon
        ("", False),
    ],
)
def test_basic_credentials(header: str, accepted: bool) -> None:
    assert BasicCredentials("user", "pwd").accepts(header.encode()) is accepted


def test_password_may_contain_colons() -> None:
    assert BasicCredentials("a", "b:c").accepts(b"Basic YTpiOmM=")
    assert not BasicCredentials("a", "b").accepts(b"Basic YTpiOmM=")
    assert "b:c" not in repr(BasicCredentials("a", "b:c"))
