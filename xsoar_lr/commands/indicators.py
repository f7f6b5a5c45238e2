"""
C{xsoar-lr indicators}: import, search, count, delete and export the
indicators of the indicator store.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from xsoar_lr.cli import CommandError, load_config_or_fail
from xsoar_lr.importers import FORMATS, FormatError, ImportOptions, parse
from xsoar_lr.indicators import Indicator, parse_score, parse_type
from xsoar_lr.query import QueryError
from xsoar_lr.store import IndicatorStore, StoreError, store_path

__all__ = ["add_commands"]

_EXPORT_FORMATS = ("text", "csv", "json")
_CSV_COLUMNS = (
    "value",
    "type",
    "score",
    "verdict",
    "tags",
    "sourceBrands",
    "firstSeen",
    "lastSeen",
    "expiration",
)


def add_commands(subparsers: Any) -> None:
    """
    Add C{indicators} and its subcommands.
    """
    group = subparsers.add_parser(
        "indicators",
        help="import, search, count, delete and export indicators",
        description="Work with the indicator store of the host that a "
        "configuration describes (its state_dir). Queries use XSOAR's indicator "
        "query syntax, for example 'type:IP and score:3' or '-tags:allowlist'.",
    )
    commands = group.add_subparsers(dest="indicators_command", metavar="SUBCOMMAND")
    commands.required = True

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--config",
            metavar="PATH",
            help="the configuration whose state_dir holds the store "
            "(default: the embedded configuration)",
        )

    importer = commands.add_parser(
        "import",
        help="import indicators from a file or standard input",
        description="Read indicators from PATH (or standard input for '-') and "
        "merge them into the store under a source name. Prints what was added, "
        "updated and skipped, with the line number and reason of each rejected "
        "value. A file that is not UTF-8 (or not valid CSV, JSON or STIX as a "
        "whole) is refused and nothing of it is stored.",
    )
    importer.add_argument("path", metavar="PATH|-")
    importer.add_argument(
        "--format",
        choices=FORMATS,
        help="the file format (default: guessed from the name and content)",
    )
    importer.add_argument(
        "--type",
        help="a type every value must fit (IP, IPv6, CIDR, IPv6CIDR, Domain, "
        "DomainGlob, URL, Email, File); default: detect each value's type",
    )
    importer.add_argument(
        "--source",
        help="the source name to store them under (default: the file name, or 'stdin')",
    )
    importer.add_argument(
        "--tag",
        action="append",
        default=[],
        dest="tags",
        help="a tag for every indicator (repeat for more)",
    )
    importer.add_argument(
        "--score",
        default="0",
        help="the score of indicators whose file gives none: 0-3 or Unknown, "
        "Benign, Suspicious, Malicious (default 0)",
    )
    importer.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="CSV: read FIELD (value, type, score, tags, firstSeen, lastSeen, "
        "expiration or a custom field name) from COLUMN (repeat for more)",
    )
    importer.add_argument(
        "--replace",
        action="store_true",
        help="make this file the source's whole contribution, removing what the "
        "source listed before and does not list now",
    )
    importer.add_argument(
        "--show",
        type=int,
        default=20,
        metavar="N",
        help="print at most N rejected lines (default 20)",
    )
    common(importer)
    importer.set_defaults(handler=run_import)

    search = commands.add_parser(
        "search",
        help="print the indicators that match a query",
        description="Print the indicators that match QUERY, one per line: "
        "value, type, verdict, sources and tags separated by tabs.",
    )
    search.add_argument("query", metavar="QUERY")
    search.add_argument("--limit", type=int, help="print at most this many")
    search.add_argument("--offset", type=int, default=0, help="skip this many first")
    search.add_argument(
        "--sort",
        default="value",
        help="value, type, score, firstSeen, lastSeen or expiration",
    )
    search.add_argument("--desc", action="store_true", help="sort in descending order")
    search.add_argument("--json", action="store_true", help="print JSON, one per line")
    common(search)
    search.set_defaults(handler=run_search)

    count = commands.add_parser(
        "count",
        help="count the indicators that match a query",
        description="Print the number of indicators that match QUERY (all of "
        "them when QUERY is left out), and the number each source lists.",
    )
    count.add_argument("query", metavar="QUERY", nargs="?", default="")
    common(count)
    count.set_defaults(handler=run_count)

    delete = commands.add_parser(
        "delete",
        help="delete the indicators that match a query",
        description="Delete the indicators that match QUERY, with what every "
        "source said about them. A feed lists them again on its next pull.",
    )
    delete.add_argument("query", metavar="QUERY")
    delete.add_argument(
        "--all",
        action="store_true",
        help="needed to delete everything with an empty QUERY",
    )
    common(delete)
    delete.set_defaults(handler=run_delete)

    export = commands.add_parser(
        "export",
        help="write indicators to a file or standard output",
        description="Write the indicators that match QUERY (all by default) as "
        "text (one value per line), CSV or JSON. JSON and CSV exports can be "
        "imported again.",
    )
    export.add_argument("query", metavar="QUERY", nargs="?", default="")
    export.add_argument("--format", choices=_EXPORT_FORMATS, default="text")
    export.add_argument("--output", "-o", metavar="FILE", help="default: stdout")
    common(export)
    export.set_defaults(handler=run_export)


def open_store(config_path: str | None) -> IndicatorStore:
    """
    Open the store of the host that the configuration at C{config_path}
    describes.

    :raises CommandError: when the configuration or the store is unusable.
    """
    return open_store_in(load_config_or_fail(config_path).state_dir)


def open_store_in(state_dir: Path) -> IndicatorStore:
    """
    Open the store in a state folder.

    :raises CommandError: when it cannot be opened.
    """
    try:
        return IndicatorStore.open(store_path(state_dir))
    except (StoreError, OSError) as e:
        raise CommandError(str(e)) from None


def run_import(args: argparse.Namespace) -> int:
    """
    Handle C{xsoar-lr indicators import}.
    """
    options, data, source = _import_request(args)
    with open_store(args.config) as store:
        return import_into(
            store, data, args.format, options, source, args.replace, args.show
        )


def _import_request(args: argparse.Namespace) -> tuple[ImportOptions, bytes, str]:
    if args.path == "-":
        data = sys.stdin.buffer.read()
        name = "<stdin>"
        source = args.source or "stdin"
    else:
        try:
            data = Path(args.path).read_bytes()
        except OSError as e:
            raise CommandError(f"Cannot read {args.path}: {e.strerror}.") from None
        name = args.path
        source = args.source or Path(args.path).name
    try:
        kind = None if args.type is None else parse_type(args.type)
        score = parse_score(args.score)
    except ValueError as e:
        raise CommandError(f"{e} (in --type or --score)") from None
    columns = {}
    for item in args.column:
        field, equals, column = item.partition("=")
        if not equals or not field.strip() or not column.strip():
            raise CommandError(
                f"--column {item!r} must be FIELD=COLUMN, as in --column value=dst_ip."
            )
        columns[field.strip()] = column.strip()
    options = ImportOptions(
        name=name, type=kind, tags=tuple(args.tags), score=score, columns=columns
    )
    return options, data, source


def import_into(
    store: IndicatorStore,
    data: bytes,
    format: str | None,
    options: ImportOptions,
    source: str,
    replace: bool = False,
    show: int = 20,
    out: IO[str] | None = None,
) -> int:
    """
    Read a file and store its indicators, printing what happened.

    :returns: the exit code: 1 when values were rejected and none stored.
    :raises CommandError: when the file cannot be read as a whole.
    """
    out = out or sys.stdout
    try:
        parsed = parse(data, format, options)
    except (FormatError, ValueError) as e:
        raise CommandError(str(e)) from None
    try:
        if replace:
            report = store.replace_source(source, parsed.indicators)
        else:
            report = store.add(parsed.indicators, source=source)
    except ValueError as e:
        raise CommandError(f"{e} (in --source)") from None
    print(
        f"Read {options.name}: {len(parsed.indicators)} values, "
        f"{parsed.skipped} comment, blank or skipped lines, "
        f"{len(parsed.rejected)} rejected.",
        file=out,
    )
    report.rejected[:0] = parsed.rejected
    print(report.summary(), file=out)
    _print_rejects(report.rejected, show, out)
    stored = report.added + report.updated
    return 1 if stored == 0 and report.rejected else 0


def _print_rejects(rejects: Sequence[Any], show: int, out: IO[str]) -> None:
    for reject in rejects[: max(show, 0)]:
        where = "" if reject.line is None else f"line {reject.line}: "
        print(f"  skipped {where}{reject.reason}", file=out)
    if len(rejects) > show:
        print(
            f"  ... and {len(rejects) - show} more rejected (use --show to see them).",
            file=out,
        )


def run_search(args: argparse.Namespace) -> int:
    """
    Handle C{xsoar-lr indicators search}.
    """
    with open_store(args.config) as store:
        try:
            results = store.search(
                args.query,
                sort_field=args.sort,
                descending=args.desc,
                offset=args.offset,
                limit=args.limit,
            )
        except (QueryError, ValueError) as e:
            raise CommandError(str(e)) from None
        for indicator in results:
            if args.json:
                print(json.dumps(indicator_to_json(indicator)))
            else:
                print(
                    "\t".join(
                        (
                            indicator.value,
                            indicator.type.value,
                            indicator.score.verdict,
                            ",".join(indicator.sources),
                            ",".join(indicator.tags),
                        )
                    )
                )
    return 0


def run_count(args: argparse.Namespace) -> int:
    """
    Handle C{xsoar-lr indicators count}.
    """
    with open_store(args.config) as store:
        try:
            print(store.count(args.query))
        except QueryError as e:
            raise CommandError(str(e)) from None
        if not args.query:
            for source, number in store.sources().items():
                print(f"  {source}: {number}")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    """
    Handle C{xsoar-lr indicators delete}.
    """
    if not args.query.strip() and not args.all:
        raise CommandError(
            "An empty query deletes every indicator; add --all if that is meant."
        )
    with open_store(args.config) as store:
        try:
            deleted = store.delete(args.query)
        except QueryError as e:
            raise CommandError(str(e)) from None
    print(f"Deleted {deleted} indicators.")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """
    Handle C{xsoar-lr indicators export}.
    """
    with open_store(args.config) as store:
        try:
            results = store.search(args.query)
        except QueryError as e:
            raise CommandError(str(e)) from None
        if args.output:
            try:
                with open(args.output, "w", encoding="utf-8", newline="") as out:
                    count = write_export(results, args.format, out)
            except OSError as e:
                raise CommandError(
                    f"Cannot write {args.output}: {e.strerror}."
                ) from None
            noun = "indicator" if count == 1 else "indicators"
            print(f"Wrote {count} {noun} to {args.output}.", file=sys.stderr)
        else:
            write_export(results, args.format, sys.stdout)
    return 0


def indicator_to_json(indicator: Indicator) -> dict[str, Any]:
    """
    An indicator as a JSON object with XSOAR's field names; L{read_json}
    reads it back.
    """
    return {
        "value": indicator.value,
        "indicator_type": indicator.type.value,
        "score": int(indicator.score),
        "verdict": indicator.score.verdict,
        "tags": list(indicator.tags),
        "sourceBrands": list(indicator.sources),
        "firstSeen": _iso(indicator.first_seen),
        "lastSeen": _iso(indicator.last_seen),
        "expiration": _iso(indicator.expiration),
        "customFields": dict(indicator.custom_fields),
    }


def _iso(moment: Any) -> str | None:
    return None if moment is None else moment.isoformat()


def write_export(indicators: Iterable[Indicator], format: str, out: IO[str]) -> int:
    """
    Write indicators as C{text}, C{csv} or C{json}.

    :returns: how many were written.
    """
    count = 0
    if format == "text":
        for count, indicator in enumerate(indicators, 1):
            out.write(indicator.value + "\n")
    elif format == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(_CSV_COLUMNS)
        for count, indicator in enumerate(indicators, 1):
            row = indicator_to_json(indicator)
            writer.writerow(
                [
                    row["value"],
                    row["indicator_type"],
                    row["score"],
                    row["verdict"],
                    ",".join(row["tags"]),
                    ",".join(row["sourceBrands"]),
                    row["firstSeen"] or "",
                    row["lastSeen"] or "",
                    row["expiration"] or "",
                ]
            )
    else:
        out.write("[")
        for count, indicator in enumerate(indicators, 1):
            separator = "\n" if count == 1 else ",\n"
            out.write(separator + json.dumps(indicator_to_json(indicator)))
        out.write("\n]\n" if count else "]\n")
    return count
