"""
Measure the indicator store on generated indicators of mixed types.

Run it by hand, never as part of the test suite::

    python bench/store_bench.py [--count 1000000] [--keep DIR]

It prints the import time, the database size, the time of a typical query
(C{type:IP and score:3}) and the time of streaming every indicator in value
order, both as L{Indicator} objects through C{search()} and as bare values.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from xsoar_lr.indicators import Indicator, Score, detect_type
from xsoar_lr.store import IndicatorStore, store_path

_TAGS = ("botnet", "phishing", "ransomware", "c2", "scanner", "spam")
_TLDS = ("com", "net", "org", "ru", "cn", "io", "co.uk", "de")


def generate(count: int, seed: int = 1) -> Iterator[str]:
    """
    Yield C{count} distinct values: about 40% IPv4, 5% CIDR, 5% IPv6, 25%
    domains, 5% globs, 10% URLs, 5% hashes and 5% e-mail addresses.
    """
    rng = random.Random(seed)
    for n in range(count):
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


def indicators(count: int) -> Iterator[Indicator]:
    """
    Wrap the generated values as indicators, detecting their types as an
    import would.
    """
    for n, value in enumerate(generate(count)):
        yield Indicator(
            value,
            detect_type(value),
            Score(n % 4),
            (_TAGS[n % len(_TAGS)],),
        )


def timed(label: str, function, *args):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = function(*args)
    elapsed = time.perf_counter() - start
    print(f"{label:<44} {elapsed:8.2f} s", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--keep", help="keep the database in this folder")
    args = parser.parse_args(argv)

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp())
    path = store_path(folder)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{path}{suffix}"):
            os.unlink(f"{path}{suffix}")
    print(
        f"{args.count:,} indicators, database {path}, Python {sys.version.split()[0]}"
    )
    try:
        store = IndicatorStore.open(path)
        report = timed(
            "import (detect types, merge, commit)",
            lambda: store.add(indicators(args.count), source="bench"),
        )
        print(f"  {report.summary()}")
        store.close()
        store = IndicatorStore.open(path)
        size = sum(
            os.path.getsize(f"{path}{s}")
            for s in ("", "-wal")
            if os.path.exists(f"{path}{s}")
        )
        print(f"{'database size (file + WAL)':<44} {size / 1e6:8.1f} MB")

        count = timed(
            "count('type:IP and score:3')", store.count, "type:IP and score:3"
        )
        print(f"  {count:,} matches")
        found = timed(
            "search('type:IP and score:3'), all read",
            lambda: sum(1 for _ in store.search("type:IP and score:3")),
        )
        print(f"  {found:,} read")
        total = timed(
            "search() of everything in value order",
            lambda: sum(1 for _ in store.search()),
        )
        print(f"  {total:,} read")
        timed(
            "search(descending=True, offset=500000, limit=1000)",
            lambda: list(store.search(descending=True, offset=500_000, limit=1000)),
        )
        timed("generation()", store.generation)
        again = timed(
            "re-import of the same list (replace_source)",
            lambda: store.replace_source("bench", indicators(args.count)),
        )
        print(f"  {again.summary()}")
        store.close()
    finally:
        if not args.keep:
            shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
