"""
C{xsoar-lr indicators}: import, search, count, delete and export from the
command line.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import pytest

from xsoar_lr.cli import CommandError
from xsoar_lr.commands import indicators as commands


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """
    Run C{xsoar-lr ARGV} with the indicators commands, as the CLI's main
    does: a CommandError becomes exit code 1 and a message on stderr.
    """
    parser = argparse.ArgumentParser(prog="xsoar-lr")
    subparsers = parser.add_subparsers(dest="command")
    commands.add_commands(subparsers)
    args = parser.parse_args(argv)
    try:
        code = args.handler(args)
    except CommandError as e:
        print(f"xsoar-lr {args.command}: {e}", file=sys.stderr)
        code = 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "xsoar-lr.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\ninstances: []\n")
    return str(path)


def test_import_prints_what_was_added_updated_and_skipped(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("# bad hosts\n192.0.2.1\n192.0.2.1\nnodot\nexample.com\n")
    code, out, _ = run(
        [
            "indicators",
            "import",
            str(listing),
            "--config",
            config,
            "--tag",
            "t",
            "--score",
            "Malicious",
        ],
        capsys,
    )
    assert code == 0
    assert "list.txt: 3 values" in out
    assert (
        "Source 'list.txt': 2 added, 0 updated, 1 duplicates merged, 1 rejected." in out
    )
    assert "skipped line 4: 'nodot' is not an indicator" in out

    listing.write_text("192.0.2.1\n")
    code, out, _ = run(
        ["indicators", "import", str(listing), "--config", config, "--replace"],
        capsys,
    )
    assert "0 added, 1 updated, 1 no longer listed" in out

    code, out, _ = run(["indicators", "count", "--config", config], capsys)
    assert out.splitlines() == ["1", "  list.txt: 1"]


def test_import_from_stdin_with_a_type_hint(
    config: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        sys,
        "stdin",
        io.TextIOWrapper(io.BytesIO(b"a.example\r\nhttp://b.example/\r\n")),
    )
    code, out, _ = run(
        ["indicators", "import", "-", "--type", "domain", "--config", config], capsys
    )
    assert code == 0
    assert "Source 'stdin': 1 added" in out
    assert "skipped line 2: 'http://b.example/' looks like a URL, not a Domain" in out


def test_a_rejected_file_stores_nothing_and_says_why(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"ok.example\nb\xe4d.example\n")
    code, _, err = run(["indicators", "import", str(latin), "--config", config], capsys)
    assert code == 1
    assert "line 2, column 2: byte 0xe4 is not UTF-8" in err
    code, out, _ = run(["indicators", "count", "--config", config], capsys)
    assert out.strip() == "0"


def test_bad_arguments_are_named(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        ["indicators", "import", str(tmp_path / "missing.txt"), "--config", config],
        capsys,
    )
    assert (code, "Cannot read") == (1, err.split(": ", 2)[1][:11])
    listing = tmp_path / "l.csv"
    listing.write_text("a,b\n")
    code, _, err = run(
        ["indicators", "import", str(listing), "--column", "value", "--config", config],
        capsys,
    )
    assert "--column 'value' must be FIELD=COLUMN" in err
    code, _, err = run(
        ["indicators", "import", str(listing), "--score", "11", "--config", config],
        capsys,
    )
    assert "'11' is not a score" in err


def test_search_count_delete_and_export(
    config: str, shared_feeds: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feodo = str(shared_feeds / "feodotracker-ipblocklist.csv")
    code, out, _ = run(
        [
            "indicators",
            "import",
            feodo,
            "--column",
            "tags=malware",
            "--score",
            "3",
            "--source",
            "feodo",
            "--config",
            config,
        ],
        capsys,
    )
    assert "728 added" in out

    code, out, _ = run(
        [
            "indicators",
            "search",
            "tags:Emotet AND score:3",
            "--limit",
            "2",
            "--config",
            config,
        ],
        capsys,
    )
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].split("\t")[1:] == ["IP", "Malicious", "feodo", "Emotet"]

    code, out, _ = run(
        ["indicators", "count", "tags:Emotet", "--config", config], capsys
    )
    emotet = int(out)
    assert 0 < emotet <= 56

    exported = tmp_path / "emotet.json"
    code, _, err = run(
        [
            "indicators",
            "export",
            "tags:Emotet",
            "--format",
            "json",
            "-o",
            str(exported),
            "--config",
            config,
        ],
        capsys,
    )
    assert f"Wrote {emotet} indicators" in err
    items = json.loads(exported.read_text())
    assert {i["indicator_type"] for i in items} == {"IP"}

    code, out, _ = run(
        ["indicators", "delete", "tags:Emotet", "--config", config], capsys
    )
    assert out.strip() == f"Deleted {emotet} indicators."
    code, out, _ = run(
        [
            "indicators",
            "import",
            str(exported),
            "--source",
            "again",
            "--config",
            config,
        ],
        capsys,
    )
    assert f"{emotet} added" in out

    code, out, _ = run(
        ["indicators", "export", "--format", "csv", "--config", config], capsys
    )
    assert out.splitlines()[0].startswith("value,type,score,verdict,tags")
    assert len(out.splitlines()) == 729

    code, _, err = run(["indicators", "delete", "", "--config", config], capsys)
    assert code == 1 and "add --all" in err
    code, _, err = run(["indicators", "search", "tags:(", "--config", config], capsys)
    assert code == 1 and "Invalid indicator query at position 6" in err
