"""
Tests for L{xsoar_lr.config}: the shape of the file, the server parameter
rules, and how problems are reported.
"""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from xsoar_lr.api import Integration
from xsoar_lr.config import (
    EMBEDDED,
    ConfigError,
    is_routed,
    load_config,
    parse_config,
    route_for,
)
from xsoar_lr.tls import ensure_self_signed

INTEGRATIONS = {
    "echo": Integration(id="echo", module="integrations.echo", display_name="Echo")
}


def parse(text: str, base: Path = Path("/srv")):
    return parse_config(dedent(text), "test.yaml", base, INTEGRATIONS)


def problems(text: str, base: Path = Path("/srv")) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text, base)
    return [str(p) for p in caught.value.problems]


def test_a_complete_file_is_read_into_frozen_settings() -> None:
    config = parse(
        """
        state_dir: state
        gateway:
          listen: "ssl:9443:interface=127.0.0.1"
          response_timeout: 30
        server_params:
          instance.execute.external: "false"
          instance.execute.external.edl: "TRUE"
        instances:
          - name: edl
            integration: echo
            port: 7000
            params: {status: "201"}
          - name: My EDL
            integration: echo
            port: 7001
            interface: "::1"
        """
    )
    assert config.state_dir == Path("/srv/state")
    assert config.gateway.port == 9443
    assert config.gateway.response_timeout == 30.0
    assert [i.name for i in config.instances] == ["edl", "My EDL"]
    assert config.instance("edl").params == {"status": 201}
    assert config.instance("My EDL").interface == "::1"
    assert [i.name for i in config.routed_instances] == ["edl"]
    with pytest.raises(AttributeError):
        config.instances[0].port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "params, name, routed",
    [
        ({}, "edl", False),
        ({"instance.execute.external": True}, "edl", True),
        ({"instance.execute.external": False}, "edl", False),
        ({"instance.execute.external.edl": True}, "edl", True),
        (
            {"instance.execute.external": True, "instance.execute.external.edl": False},
            "edl",
            False,
        ),
        (
            {"instance.execute.external": False, "instance.execute.external.edl": True},
            "edl",
            True,
        ),
        ({"instance.execute.external.EDL": True}, "edl", False),
        ({"instance.execute.external.edl": True}, "EDL", False),
        ({"instance.execute.external.my.edl": True}, "my.edl", True),
    ],
)
def test_server_parameters_follow_xsoar(
    params: dict[str, bool], name: str, routed: bool
) -> None:
    """
    The per-instance key decides when set, in either direction; otherwise
    the default key; otherwise nothing is routed. Names are case-sensitive.
    """
    assert is_routed(params, name) is routed


@pytest.mark.parametrize("value", [True, "true", "True", "TRUE", " true "])
def test_server_parameters_accept_booleans_and_true_false_strings(
    value: object,
) -> None:
    config = parse(
        f"""
        server_params:
          instance.execute.external: {value!r}
        """
    )
    assert config.server_params == {"instance.execute.external": True}


def test_a_server_parameter_that_is_not_true_or_false_is_an_error() -> None:
    found = problems(
        """
        server_params:
          instance.execute.external: "yes please"
        """
    )
    assert found == [
        "test.yaml:3: server_params: 'instance.execute.external' must be true or "
        "false, not 'yes please'."
    ]


def test_a_server_parameter_naming_no_instance_warns_and_suggests_the_case() -> None:
    config = parse(
        """
        server_params:
          instance.execute.external.EDL: true
        instances:
          - {name: edl, integration: echo, port: 7000}
        """
    )
    assert config.warnings == (
        "test.yaml:3: server_params: 'instance.execute.external.EDL' names no "
        "instance. Instance names are case-sensitive: did you mean "
        "'instance.execute.external.edl'?",
    )
    assert config.routed_instances == ()


def test_every_problem_is_reported_at_once_with_its_line() -> None:
    found = problems(
        """
        stat_dir: x
        gateway:
          listen: "ssl:8443"
        server_params:
          instance.execute.externall: true
        instances:
          - name: a
            integration: echo
            port: 8443
          - name: a
            integration: nope
            port: 70000
          - name: b/c
            integration: echo
            port: 7001
            prams: {}
          - name: d
            integration: echo
            port: 7001
            params: {status: "many", colour: red}
        """
    )
    assert found == [
        "test.yaml:2: the top level: unknown key 'stat_dir'; the known keys are "
        "state_dir, gateway, server_params, instances, feeds, management. Did you mean "
        "'state_dir'?",
        "test.yaml:6: server_params: unknown key 'instance.execute.externall'; the "
        "gateway reads 'instance.execute.external' and "
        "'instance.execute.external.<instance name>'.",
        "test.yaml:10: instance 'a': port 8443 is the gateway's port; choose another.",
        "test.yaml:11: instance 'a': the name is already used at line 8; instance "
        "names must be unique.",
        "test.yaml:12: instance 'a': 'integration' 'nope' is not installed; the "
        "installed integrations are: echo.",
        "test.yaml:13: instance 'a': 'port' must be a whole number from 1 to 65535, "
        "not 70000.",
        "test.yaml:14: instance 'b/c': a name may hold any printable characters "
        "but '/'.",
        "test.yaml:17: instance 'b/c': unknown key 'prams'; the known keys are "
        "name, integration, port, interface, certificate, private_key, params, route, "
        "access_log. "
        "Did you mean 'params'?",
        "test.yaml:20: instance 'd': port 7001 is already used by instance 'b/c'; "
        "give each instance its own port.",
        "test.yaml:21: instance 'd': Parameter 'colour' is not a parameter of "
        "this integration; the known ones are: status.",
        "test.yaml:21: instance 'd': Parameter 'status': expected a number, not "
        "'many'.",
    ]


def test_a_routed_instance_with_its_own_certificate_is_an_error(tmp_path: Path) -> None:
    pair, _ = ensure_self_signed(tmp_path)
    found = problems(
        f"""
        server_params:
          instance.execute.external.edl: true
        instances:
          - name: edl
            integration: echo
            port: 7000
            certificate: {pair.certificate_path}
            private_key: {pair.key_path}
        """
    )
    assert len(found) == 1
    assert found[0].startswith("test.yaml:8: instance 'edl': it is routed")
    assert "over plain HTTP" in found[0]


def test_an_instance_that_is_not_routed_may_serve_https(tmp_path: Path) -> None:
    pair, _ = ensure_self_signed(tmp_path)
    config = parse(
        f"""
        instances:
          - name: edl
            integration: echo
            port: 7000
            certificate: {pair.certificate_path}
            private_key: {pair.key_path}
        """
    )
    assert config.instance("edl").certificate == pair.certificate_path


def test_certificate_problems_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("not a certificate")
    found = problems(
        f"""
        gateway:
          certificate: {tmp_path / "bad.pem"}
          private_key: {tmp_path / "missing.key"}
        """
    )
    assert len(found) == 1
    assert "missing.key" in found[0] and "cannot be read" in found[0]


def test_half_a_certificate_pair_is_an_error() -> None:
    found = problems(
        """
        gateway:
          certificate: cert.pem
        """
    )
    assert found == [
        "test.yaml:3: gateway: 'certificate' and 'private_key' go together; set "
        "both or neither."
    ]


@pytest.mark.parametrize(
    "listen, fragment",
    [
        ("http:8080", "is not a server endpoint"),
        ("ssl:99999", "has no valid port"),
        ("ssl:8443:privateKey=k.pem", "sets privateKey"),
    ],
)
def test_bad_listen_descriptions_are_explained(listen: str, fragment: str) -> None:
    found = problems(f'gateway: {{listen: "{listen}"}}')
    assert len(found) == 1 and fragment in found[0]


def test_duplicate_keys_are_errors_not_silently_overwritten() -> None:
    found = problems(
        """
        instances:
          - name: edl
            integration: echo
            port: 7000
            port: 7001
        """
    )
    assert found == ["test.yaml:6: The key 'port' is given twice; keep one."]


def test_invalid_yaml_names_the_line() -> None:
    found = problems("instances:\n  - name: [unclosed\n")
    assert len(found) == 1
    assert found[0].startswith("test.yaml:3: This is not valid YAML")


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.yaml", INTEGRATIONS)
    assert "cannot be read" in str(caught.value)


def test_relative_paths_start_from_the_files_folder(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "x.yaml"
    path.parent.mkdir()
    path.write_text("state_dir: ../state\n")
    assert (
        load_config(path, INTEGRATIONS).state_dir == tmp_path / "conf" / ".." / "state"
    )


def test_the_embedded_configuration_routes_an_edl_instance(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    config = load_config(None)
    assert config.source == EMBEDDED
    assert config.state_dir == tmp_path / "xsoar-lr"
    assert config.gateway.port == 8443
    assert [(i.name, i.integration, i.port) for i in config.routed_instances] == [
        ("edl", "edl", 7000)
    ]


def test_instance_state_folders_cannot_escape_and_do_not_collide() -> None:
    config = parse("state_dir: /s\n")
    names = ["..", ".", "My EDL", "my edl", "a%2Fb", "a\\b"]
    folders = [config.instance_state_dir(n) for n in names]
    assert len(set(folders)) == len(names)
    for folder in folders:
        assert folder.parent == Path("/s/instances")
        assert folder.name not in ("..", ".")


def test_routes_percent_encode_the_name() -> None:
    assert route_for("My EDL") == "/instance/execute/My%20EDL"
    assert route_for("a?b#c") == "/instance/execute/a%3Fb%23c"


def test_an_empty_file_is_a_configuration_with_nothing_to_run() -> None:
    config = parse("")
    assert config.instances == () and config.routed_instances == ()


def test_an_invalid_port_is_not_also_reported_as_taken() -> None:
    found = problems(
        """
        instances:
          - {name: a, integration: echo, port: 70000}
          - {name: b, integration: echo, port: 0}
        """
    )
    assert len(found) == 2
    assert all("must be a whole number from 1 to 65535" in p for p in found)


def test_the_management_site_needs_a_port_of_its_own() -> None:
    found = problems(
        """
        gateway: {listen: "ssl:8443"}
        management: {listen: "tcp:7000:interface=127.0.0.1"}
        instances:
          - {name: a, integration: echo, port: 7000}
        """
    )
    assert found == [
        "test.yaml:3: management: port 7000 is already used by instance 'a'; "
        "choose another."
    ]


def test_dot_names_are_allowed_with_a_warning() -> None:
    config = parse("instances: [{name: '..', integration: echo, port: 7000}]\n")
    assert len(config.warnings) == 1
    assert (
        "reachable only by clients that send the path as it is" in (config.warnings[0])
    )


def test_missing_keys_are_called_missing() -> None:
    assert problems("instances: [{name: a}]\n") == [
        "test.yaml:1: instance 'a': 'port' is missing; give the instance a port "
        "of its own, from 1 to 65535.",
        "test.yaml:1: instance 'a': 'integration' is missing; the installed "
        "integrations are: echo.",
    ]
