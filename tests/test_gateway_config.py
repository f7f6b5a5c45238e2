"""
Tests for the gateway's and routes' settings in the configuration file:
defaults, per-instance overrides and the problems reported for bad values.
"""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import netaddr
import pytest

from xsoar_lr.api import Integration
from xsoar_lr.config import ConfigError, RouteConfig, parse_config

INTEGRATIONS = {
    "echo": Integration(id="echo", module="integrations.echo", display_name="Echo")
}


def parse(text: str) -> object:
    return parse_config(dedent(text), "test.yaml", Path("/srv"), INTEGRATIONS)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return [str(p) for p in caught.value.problems]


def test_routes_take_the_gateway_defaults_and_their_own_overrides() -> None:
    config = parse(
        """
        gateway:
          response_timeout: 30
          max_body_size: 2048
          allow: [10.0.0.0/8, "2001:db8::/32"]
          trusted_proxies: [192.0.2.1]
          hsts: 600
          auth_failure_limit: 0
        instances:
          - {name: a, integration: echo, port: 7001}
          - name: b
            integration: echo
            port: 7002
            route: {max_body_size: 100, max_concurrent_requests: 3, allow: [192.0.2.0/24]}
        """
    )
    gateway = config.gateway  # type: ignore[attr-defined]
    a, b = config.instances  # type: ignore[attr-defined]
    assert a.route == gateway.route
    assert a.route.max_body_size == 2048 and a.route.response_timeout == 30
    assert a.route.allow == (
        netaddr.IPNetwork("10.0.0.0/8"),
        netaddr.IPNetwork("2001:db8::/32"),
    )
    assert (b.route.max_body_size, b.route.max_concurrent_requests) == (100, 3)
    assert b.route.response_timeout == 30
    assert b.route.allow == (netaddr.IPNetwork("192.0.2.0/24"),)
    assert gateway.trusted_proxies == (netaddr.IPNetwork("192.0.2.1/32"),)
    assert (gateway.hsts, gateway.auth_failure_limit) == (600, 0)


def test_the_defaults_without_any_settings() -> None:
    config = parse("instances: [{name: a, integration: echo, port: 7001}]")
    route = config.instances[0].route  # type: ignore[attr-defined]
    assert route == RouteConfig()
    assert route.max_body_size == 10 * 1024 * 1024
    assert route.allow is None and not route.require_client_certificate


def test_bad_route_and_gateway_settings_are_reported_with_their_lines() -> None:
    found = problems(
        """
        gateway:
          max_body_size: -1
          allow: [10.0.0.0/33]
          trusted_proxies: nonsense
          idle_timeout: 0
          max_headers: many
          hsts: yes
          require_client_certificate: true
        instances:
          - name: a
            integration: echo
            port: 7001
            route:
              max_concurent_requests: 2
              allow: []
              require_client_certificate: 1
          - {name: b, integration: echo, port: 7002, route: [1]}
        """
    )
    assert found == [
        "test.yaml:3: gateway: 'max_body_size' must be a whole number of bytes "
        "from 0 up, not -1.",
        "test.yaml:4: gateway: 'allow' holds '10.0.0.0/33', which is not an IP "
        "address or a network in CIDR form such as 10.0.0.0/8; quote each entry "
        "as a string.",
        "test.yaml:5: gateway: 'trusted_proxies' holds 'nonsense', which is not an "
        "IP address or a network in CIDR form such as 10.0.0.0/8; quote each entry "
        "as a string.",
        "test.yaml:6: gateway: 'idle_timeout' must be a positive number of "
        "seconds, not 0.",
        "test.yaml:7: gateway: 'max_headers' must be a whole number of headers "
        "from 1 up, not 'many'.",
        "test.yaml:8: gateway: 'hsts' must be a whole number of seconds from 0 "
        "up, not True.",
        "test.yaml:9: gateway: 'require_client_certificate' needs 'client_ca', "
        "the PEM file of the authorities that sign client certificates.",
        "test.yaml:15: instance 'a': route: unknown key 'max_concurent_requests'; "
        "the known keys are connect_timeout, response_timeout, max_body_size, "
        "max_concurrent_requests, allow, require_client_certificate. Did you mean "
        "'max_concurrent_requests'?",
        "test.yaml:16: instance 'a': route: 'allow' is empty, so no client could "
        "use the route; list the networks that may, or remove the key to allow "
        "all.",
        "test.yaml:17: instance 'a': route: 'require_client_certificate' must be "
        "true or false, not 1.",
        "test.yaml:18: instance 'b': 'route' must be a mapping of route settings "
        "such as {max_body_size: 1048576}, not [1].",
    ]


def test_a_client_ca_that_is_not_a_certificate_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("nope")
    found = problems(
        f"""
        gateway:
          client_ca: {bad}
        """
    )
    assert found == [
        f"test.yaml:3: gateway: 'client_ca': the certificate file {str(bad)!r} "
        "holds no PEM certificate; give a file that starts with "
        "'-----BEGIN CERTIFICATE-----'."
    ]
