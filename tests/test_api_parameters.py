"""
Tests of the declared parameter schemas of L{xsoar_lr.api}.
"""

from __future__ import annotations

import pytest

from xsoar_lr.api import (
    MASK,
    Parameter,
    ParameterError,
    mask_secrets,
    validate_parameters,
)

CREDENTIALS = Parameter("credentials", kind="credentials", display="Username")
TOKEN = Parameter("api_key", secret=True, choices=("a", "b"))


def test_credentials_are_a_mapping_of_identifier_and_password() -> None:
    params = validate_parameters(
        [CREDENTIALS],
        {"credentials": {"identifier": "_header:X-Token", "password": "s"}},
    )
    assert params == {"credentials": {"identifier": "_header:X-Token", "password": "s"}}
    partial = validate_parameters([CREDENTIALS], {"credentials": {"identifier": "u"}})
    assert partial["credentials"] == {"identifier": "u", "password": ""}


@pytest.mark.parametrize(
    "value, expected",
    [
        ("alice:hunter2", "mapping with the keys 'identifier' and 'password'"),
        ({"user": "alice", "password": "hunter2"}, "unknown key(s) 'user'"),
        ({"identifier": "alice", "password": 12345}, "'password' must be a string"),
    ],
)
def test_bad_credentials_are_explained_without_repeating_them(
    value: object, expected: str
) -> None:
    with pytest.raises(ParameterError) as caught:
        validate_parameters([CREDENTIALS], {"credentials": value}, instance="hook")
    message = str(caught.value)
    assert message.startswith("Instance 'hook': Parameter 'credentials': ")
    assert expected in message
    assert "hunter2" not in message and "12345" not in message


def test_a_bad_secret_is_not_repeated_in_the_error() -> None:
    with pytest.raises(ParameterError) as caught:
        validate_parameters([TOKEN], {"api_key": "sup3r-secret"})
    assert "sup3r-secret" not in str(caught.value)
    assert "the given value is not one of 'a', 'b'" in str(caught.value)


def test_every_problem_is_reported_with_its_parameter() -> None:
    schema = [
        Parameter("port", kind="int", minimum=1),
        Parameter("name", required=True),
        Parameter("incidentType", display="Incident type"),
    ]
    with pytest.raises(ParameterError) as caught:
        validate_parameters(
            schema, {"port": "zero", "Incident type": "x"}, instance="my hook"
        )
    problems = {p.parameter: p.message for p in caught.value.problems}
    assert set(problems) == {"port", "name", "Incident type"}
    assert problems["port"] == (
        "Instance 'my hook': Parameter 'port': expected a number, not 'zero'."
    )
    assert "Did you mean 'incidentType'?" in problems["Incident type"]
    assert all(m.startswith("Instance 'my hook': ") for m in problems.values())


def test_a_default_that_does_not_fit_fails_at_declaration() -> None:
    with pytest.raises(ValueError, match="default of parameter 'limit'"):
        Parameter("limit", kind="int", default="many")
    with pytest.raises(ValueError, match="default of parameter 'mode'"):
        Parameter("mode", choices=["a", "b"], default="c")


def test_defaults_are_copies() -> None:
    schema = [Parameter("tags", kind="list", default=["a"])]
    first = validate_parameters(schema, {})
    first["tags"].append("b")
    assert validate_parameters(schema, {}) == {"tags": ["a"]}


def test_labels_fall_back_to_names() -> None:
    assert CREDENTIALS.label == "Username"
    assert TOKEN.label == "api_key"


def test_masking_hides_secrets_and_passwords_only() -> None:
    schema = [CREDENTIALS, TOKEN, Parameter("plain")]
    shown = mask_secrets(
        schema,
        {
            "credentials": {"identifier": "alice", "password": "pw"},
            "api_key": "a",
            "plain": "visible",
            "unset": None,
        },
    )
    assert shown == {
        "credentials": {"identifier": "alice", "password": MASK},
        "api_key": MASK,
        "plain": "visible",
        "unset": None,
    }
    assert mask_secrets(schema, {"api_key": ""}) == {"api_key": ""}
