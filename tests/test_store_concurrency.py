"""
An import in another process while an instance reads: each read sees the
old or the new set, never a mix.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from xsoar_lr.indicators import Indicator, IndicatorType
from xsoar_lr.store import IndicatorStore, store_path

SIZE = 3000

# The writer replaces the feed's list again and again, each time with a
# different set of values, all tagged with the round's number.
WRITER = """
import sys
from xsoar_lr.indicators import Indicator
from xsoar_lr.store import IndicatorStore
store = IndicatorStore.open(sys.argv[1])
size, rounds = int(sys.argv[2]), int(sys.argv[3])
for r in range(1, rounds + 1):
    store.replace_source(
        "feed",
        (Indicator(f"10.{r % 200}.{n // 256}.{n % 256}", "IP", tags=(f"round{r}",))
         for n in range(size)),
    )
    print(r, flush=True)
store.close()
"""


def test_readers_see_the_old_or_the_new_list_never_a_mix(tmp_path: Path) -> None:
    path = store_path(tmp_path)
    store = IndicatorStore.open(path)
    store.replace_source(
        "feed",
        (
            Indicator(f"10.0.{n // 256}.{n % 256}", IndicatorType.IP, tags=("round0",))
            for n in range(SIZE)
        ),
    )
    rounds = 6
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(SIZE), str(rounds)],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        text=True,
    )
    seen_rounds = set()
    reads = 0
    deadline = time.monotonic() + 120
    try:
        while writer.poll() is None or reads < 3:
            assert time.monotonic() < deadline, "the writer did not finish in time"
            tags = [i.tags for i in store.search()]
            reads += 1
            assert len(tags) == SIZE
            assert len(set(tags)) == 1, f"a read mixed rounds: {set(tags)}"
            seen_rounds.add(tags[0])
            if writer.poll() is not None and reads >= 3:
                break
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == 0
    assert store.count() == SIZE
    assert store.count(f"tags:round{rounds}") == SIZE
    assert len(seen_rounds) >= 2
    store.close()


def test_a_reader_does_not_block_an_import(tmp_path: Path) -> None:
    path = store_path(tmp_path)
    store = IndicatorStore.open(path)
    store.add(
        (Indicator(f"10.0.{n // 256}.{n % 256}", "IP") for n in range(SIZE)),
        source="a",
    )
    results = store.search()
    next(results)
    # A second store (as another process would have) writes while the
    # first one's read is open; with WAL it does not wait for the reader.
    other = IndicatorStore.open(path)
    started = time.monotonic()
    other.add([Indicator("192.0.2.1", "IP")], source="b")
    assert time.monotonic() - started < 5
    assert sum(1 for _ in results) == SIZE - 1
    assert store.count() == SIZE + 1
    other.close()
    store.close()
