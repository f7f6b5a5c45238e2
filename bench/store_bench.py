"""
Measure the indicator store on generated indicators of mixed types.

Run it by hand, never as part of the test suite::

    python bench/store_bench.py [--count 1000000] [--keep DIR] [--skip-replace]

The indicators go in the way an operator's import does: a CSV file (value,
score and tags columns) is read by L{xsoar_lr.importers.read_csv}, which
detects each value's type, and the result is given to C{add()}. The bench
prints the time of reading and of storing, the database size, the time of a
typical query (C{type:IP and score:3}) and of streaming every indicator in
value order, both as L{Indicator} objects through C{search()} and counted.
It then times two feed refreshes with C{replace_source}: the same list
again, and the list with 1% of its values replaced by new ones and another
1% given a new tag.

The script only uses the store's public methods, so it also measures older
versions of the store: run it with C{PYTHONPATH} pointing at a checkout of
the version to compare with.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from xsoar_lr.importers import ImportOptions, Parsed, read_csv
from xsoar_lr.store import IndicatorStore, store_path

_TAGS = ("botnet", "phishing", "ransomware", "c2", "scanner", "spam")
_TLDS = ("com", "net", "org", "ru", "cn", "io", "co.uk", "de")


def generate(count: int, seed: int = 1, start: int = 0) -> Iterator[str]:
    """
    Yield C{count} distinct values: about 40% IPv4, 5% CIDR, 5% IPv6, 25%
    domains, 5% globs, 10% URLs, 5% hashes and 5% e-mail addresses.
    C{start} numbers the first value, so that ranges of numbers give
    disjoint values.
    """
    rng = random.Random(seed)
    for n in range(start, start + count):
        kind = n % 20
        word = f"{rng.getrandbits(40):x}{n:x}"
        if kind < 8:
            yield f"{(n >> 16) % 223 + 1}.{(n >> 8) & 255}.{n & 255}.{kind * 31}"
        elif kind == 8:
            yield f"{n % 223 + 1}.{(n >> 8) & 255}.{(n >> 16) & 255}.0/24"
        elif kind == 9:
            yield f"2001:db8:{n >> 16:x}:{n & 0xFFFF:x}::{kind:x}"
        elif kind < 15:
            yield f"h{word}.example-{n % 997}.{_TLDS[n % len(_TLDS)]}"
        elif kind == 15:
            yield f"*.g{word}.{_TLDS[n % len(_TLDS)]}"
        elif kind < 18:
            yield f"https://u{word}.example.net/path/{n}?q={n % 13}"
        elif kind == 18:
            yield f"{rng.getrandbits(128):032x}"
        else:
            yield f"user{n}@m{word}.example.org"


def csv_file(count: int, changed: float = 0.0) -> bytes:
    """
    Return a CSV file of C{count} generated indicators with a score and a
    tag each.

    With C{changed} > 0, that share of the values is replaced by values not
    in the unchanged file, and as many others get a second tag: the file a
    feed serves on its next refresh.
    """
    step = round(1 / changed) if changed else 0
    lines = ["value,score,tags"]
    for n, value in enumerate(generate(count)):
        tags = _TAGS[n % len(_TAGS)]
        if step and n % step == 0:
            value = next(generate(1, seed=n, start=count + n))
        elif step and n % step == 1:
            tags += "|refreshed"
        if "," in value:
            value = f'"{value}"'
        lines.append(f"{value},{n % 4},{tags}")
    return ("\n".join(lines) + "\n").encode()


def timed(label: str, function: Callable[[], Any]) -> Any:
    """
    Call C{function}, print how long it took (and the CPU time of this
    process, which another load on the machine disturbs less), and return
    its result.
    """
    start, cpu = time.perf_counter(), time.process_time()
    result = function()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"{label:<48} {elapsed:8.2f} s  (CPU {cpu:.2f} s)", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    """
    Run the benchmark; see the module's docstring.
    """
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[1])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--keep", help="keep the database in this folder")
    parser.add_argument(
        "--skip-replace", action="store_true", help="leave out the feed refreshes"
    )
    args = parser.parse_args(argv)

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp())
    path = store_path(folder)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{path}{suffix}"):
            os.unlink(f"{path}{suffix}")
    import xsoar_lr.store

    print(
        f"{args.count:,} indicators, database {path}, Python "
        f"{sys.version.split()[0]}, store code {xsoar_lr.store.__file__}"
    )
    options = ImportOptions(name="bench.csv")
    data = csv_file(args.count)
    try:
        store = IndicatorStore.open(path)
        started, cpu = time.perf_counter(), time.process_time()
        parsed: Parsed = timed(
            "read CSV (detect types)", lambda: read_csv(data, options)
        )
        report = timed(
            "add() (check, merge, commit)",
            lambda: store.add(parsed.indicators, source="bench"),
        )
        total, cpu = time.perf_counter() - started, time.process_time() - cpu
        print(f"{'import in all (read + add)':<48} {total:8.2f} s  (CPU {cpu:.2f} s)")
        print(f"  {report.summary()}")
        store.close()
        store = IndicatorStore.open(path)
        size = sum(
            os.path.getsize(f"{path}{s}")
            for s in ("", "-wal")
            if os.path.exists(f"{path}{s}")
        )
        print(f"{'database size (file + WAL)':<48} {size / 1e6:8.1f} MB")

        count = timed(
            "count('type:IP and score:3')", lambda: store.count("type:IP and score:3")
        )
        print(f"  {count:,} matches")
        found = timed(
            "search('type:IP and score:3'), all read",
            lambda: sum(1 for _ in store.search("type:IP and score:3")),
        )
        print(f"  {found:,} read")
        for attempt in (1, 2):
            read = timed(
                f"search() of everything in value order ({attempt})",
                lambda: sum(1 for _ in store.search()),
            )
        print(f"  {read:,} read")
        timed(
            "search(descending=True, offset=500000, limit=1000)",
            lambda: list(store.search(descending=True, offset=500_000, limit=1000)),
        )
        timed("generation()", store.generation)

        if not args.skip_replace:
            again = timed(
                "replace_source() with the same list",
                lambda: store.replace_source("bench", parsed.indicators),
            )
            print(f"  {again.summary()}")
            parsed = read_csv(csv_file(args.count, changed=0.01), options)
            changed = timed(
                "replace_source() with 1% new, 1% retagged",
                lambda: store.replace_source("bench", parsed.indicators),
            )
            print(f"  {changed.summary()}")
            print(f"  {store.count('tags:refreshed'):,} tagged 'refreshed'")
        store.close()
    finally:
        if not args.keep:
            shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
