"""
Keeping built lists and sharing builds.

L{ListCache} serves the periodic mode: a list is rebuilt when its refresh
rate has passed or the indicator store has changed. L{OnDemandList} serves
the on-demand mode: the list is rebuilt only when an update has been
requested (see L{integrations.lists.ondemand}), and the last build is kept
in the instance's state folder so that it survives a restart.

Both run every blocking step (store access, building, compressing) in the
reactor's thread pool, and both share one build among all the requests that
arrive while it runs, so concurrent requests never pile up.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, DeferredSemaphore, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from integrations.lists import ondemand
from integrations.lists.build import BuiltList, build_list, compress, remove_files
from integrations.lists.settings import ListSettings
from xsoar_lr.indicators import Indicator

__all__ = ["ListCache", "OnDemandList", "SharedCalls"]

T = TypeVar("T")

IndicatorSource = Callable[[ListSettings], Iterable[Indicator]]


class SharedCalls:
    """
    Runs blocking calls in the reactor's thread pool, one at a time per key:
    a caller that asks for a key already being worked on waits for the same
    result instead of starting another call.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._waiting: dict[Hashable, list[Deferred[Any]]] = {}

    def busy(self, key: Hashable) -> bool:
        """
        Whether a call for C{key} is running.
        """
        return key in self._waiting

    def run(
        self,
        key: Hashable,
        function: Callable[[], T],
        slots: DeferredSemaphore | None = None,
    ) -> Deferred[T]:
        """
        Run C{function} in a thread unless a call for C{key} is running, and
        return a Deferred for the (shared) result.

        :param slots: if given, the call waits for one of these first, which
            bounds how many such calls hold pool threads at once.
        """
        result: Deferred[T] = Deferred()
        if key in self._waiting:
            self._waiting[key].append(result)
            return result
        self._waiting[key] = [result]
        pool = self._reactor.getThreadPool()
        if slots is None:
            work = deferToThreadPool(self._reactor, pool, function)
        else:
            work = slots.run(deferToThreadPool, self._reactor, pool, function)

        def done(outcome: Any) -> None:
            for waiter in self._waiting.pop(key):
                if isinstance(outcome, Failure):
                    waiter.errback(outcome)
                else:
                    waiter.callback(outcome)

        work.addBoth(done)
        return result


def gzipped_copy(calls: SharedCalls, built: BuiltList) -> Deferred[Path]:
    """
    The gzip copy of C{built}, made once (in a thread, shared by concurrent
    requests) and kept with it.
    """
    if built.gzipped is not None:
        return succeed(built.gzipped)

    def made(path: Path) -> Path:
        built.gzipped = path
        return path

    return calls.run(("gzip", built.body), lambda: compress(built.body)).addCallback(
        made
    )


class ListCache:
    """
    Built lists of the periodic mode, one per distinct L{ListSettings}.

    :param directory: where the lists' files go; files left there by an
        earlier run are removed.
    :param indicators: returns the indicators of a list (blocking).
    :param generation: returns the store's generation (blocking, cheap).
    :param refresh_seconds: how long a built list is reused at most.
    :param max_lists: how many distinct lists are kept; the least recently
        used one goes first.
    :param max_builds: how many lists are built at once; more wait, so that
        a burst of distinct requests leaves the thread pool free for the
        quick store checks of cached lists.
    """

    log = Logger()

    def __init__(
        self,
        *,
        reactor: Any,
        directory: Path,
        indicators: IndicatorSource,
        generation: Callable[[], int],
        refresh_seconds: int,
        list_name: str,
        max_lists: int = 16,
        max_builds: int = 2,
    ) -> None:
        self._reactor = reactor
        self._directory = directory
        self._indicators = indicators
        self._generation = generation
        self._refresh = refresh_seconds
        self._list_name = list_name
        self._max_lists = max_lists
        self._lists: OrderedDict[ListSettings, BuiltList] = OrderedDict()
        self._calls = SharedCalls(reactor)
        self._build_slots = DeferredSemaphore(max_builds)
        self.latest: BuiltList | None = None
        directory.mkdir(parents=True, exist_ok=True)
        remove_files(p for p in directory.iterdir() if p.name.startswith("list-"))

    def _fresh(self, built: BuiltList, generation: int) -> bool:
        age = self._reactor.seconds() - built.created
        return built.generation == generation and 0 <= age < self._refresh

    def get(
        self, settings: ListSettings, *, rebuild: bool = False
    ) -> Deferred[BuiltList]:
        """
        Return the list for C{settings}: the kept one while it is fresh,
        else a new build (shared with every request waiting for it).

        :param rebuild: build anew even if the kept list is fresh.
        """
        if self._calls.busy(("build", settings)):
            return self._build(settings)
        if rebuild:
            return self._build(settings)
        checked = self._calls.run("generation", self._generation)

        def decide(generation: int) -> Deferred[BuiltList]:
            built = self._lists.get(settings)
            if built is not None and self._fresh(built, generation):
                self._lists.move_to_end(settings)
                return succeed(built)
            return self._build(settings)

        return checked.addCallback(decide)

    def _build(self, settings: ListSettings) -> Deferred[BuiltList]:
        def work() -> BuiltList:
            return build_list(
                settings,
                self._indicators,
                self._directory,
                generation=self._generation,
                list_name=self._list_name,
                clock=self._reactor.seconds,
            )

        key = ("build", settings)
        starting = not self._calls.busy(key)
        result = self._calls.run(key, work, self._build_slots)
        if starting:
            self.log.debug("Building a list: {settings}", settings=settings.describe())
        return result.addCallback(self._keep)

    def _keep(self, built: BuiltList) -> BuiltList:
        old = self._lists.get(built.settings)
        if old is built:
            return built
        previous = self.latest
        self.log.info(
            "Built a {list_format} list of {entries} entries from {origin} indicators "
            "in {seconds:.3f} s",
            list_format=built.settings.format.value,
            entries=built.entries,
            origin=built.origin_size,
            seconds=built.query_seconds,
            metric="list_build",
        )
        self._lists[built.settings] = built
        self._lists.move_to_end(built.settings)
        self.latest = built
        if old is not None and old is not previous:
            remove_files(old.files())
        while len(self._lists) > self._max_lists:
            _, evicted = self._lists.popitem(last=False)
            if evicted is not previous:
                remove_files(evicted.files())
        # The previous build stayed on disk for /log; it can go once it is
        # neither the latest nor kept.
        if (
            previous is not None
            and previous is not built
            and all(kept is not previous for kept in self._lists.values())
        ):
            remove_files(previous.files())
        return built

    def gzipped(self, built: BuiltList) -> Deferred[Path]:
        """
        Return the gzip copy of a built list, making it (once) if needed.
        """
        return gzipped_copy(self._calls, built)

    def close(self) -> None:
        """
        Remove every kept list's files.
        """
        for built in self._lists.values():
            remove_files(built.files())
        self._lists.clear()


class OnDemandList:
    """
    The one list of an instance in on-demand mode.

    The list is built from the instance's settings, changed by the last
    update request, and kept in C{directory} with a record of the request it
    answers. It is rebuilt when a newer update request is found in the state
    folder (checked on every request: one C{stat}), never otherwise.

    :param base: turns the parameters of an update request into settings.
    """

    log = Logger()

    def __init__(
        self,
        *,
        reactor: Any,
        state_dir: Path,
        indicators: IndicatorSource,
        settings_for: Callable[[dict[str, Any]], ListSettings],
        list_name: str,
    ) -> None:
        self._reactor = reactor
        self._state_dir = state_dir
        self._directory = state_dir / "on-demand"
        self._indicators = indicators
        self._settings_for = settings_for
        self._list_name = list_name
        self._calls = SharedCalls(reactor)
        self.latest: BuiltList | None = None
        self._answered: int | None = None
        self._seen_stamp: tuple[int, int] | None = None
        self._directory.mkdir(parents=True, exist_ok=True)
        self._restore()

    @property
    def _record(self) -> Path:
        return self._directory / "list.json"

    def _restore(self) -> None:
        try:
            data = json.loads(self._record.read_text("utf-8"))
            request = data["request"]
            settings = self._settings_for(request.get("params", {}))
            self.latest = BuiltList.from_json(self._directory, settings, data["list"])
            self._answered = request.get("serial")
        except FileNotFoundError:
            return
        except (KeyError, TypeError, ValueError) as e:
            self.log.warn(  # noqa: G010 (twisted.logger names it warn)
                "Ignoring the damaged on-demand list record {path}: {error}",
                path=str(self._record),
                error=str(e),
            )
            self.latest = None
            self._answered = None
        keep = set() if self.latest is None else {p.name for p in self.latest.files()}
        keep.add(self._record.name)
        remove_files(p for p in self._directory.iterdir() if p.name not in keep)

    def _pending(self) -> bool:
        stamp = ondemand.request_stamp(self._state_dir)
        if self.latest is not None and stamp == self._seen_stamp:
            return False
        request = ondemand.read_request(self._state_dir)
        serial = None if request is None else request.get("serial")
        if self.latest is not None and serial == self._answered:
            self._seen_stamp = stamp
            return False
        return True

    def get(
        self, settings: ListSettings, *, rebuild: bool = False
    ) -> Deferred[BuiltList]:
        """
        Return the kept list, building it first when an update request has
        not been answered yet (or no list was ever built). The request's
        own settings and C{rebuild} are ignored: in on-demand mode only an
        update request changes the list.
        """
        if self.latest is not None and not self._calls.busy("build"):
            try:
                pending = self._pending()
            except ondemand.UpdateRequestError as e:
                self.log.error("{error}", error=str(e))
                pending = False
            if not pending:
                return succeed(self.latest)
        return self._calls.run("build", self._build).addCallback(self._keep)

    def _build(self) -> tuple[BuiltList, dict[str, Any], tuple[int, int] | None]:
        stamp = ondemand.request_stamp(self._state_dir)
        request = ondemand.read_request(self._state_dir) or {
            "serial": None,
            "params": {},
        }
        settings = self._settings_for(request.get("params", {}))
        built = build_list(
            settings,
            self._indicators,
            self._directory,
            list_name=self._list_name,
            clock=self._reactor.seconds,
        )
        record = {"request": request, "list": built.to_json()}
        temporary = self._record.with_suffix(".tmp")
        temporary.write_text(json.dumps(record), "utf-8")
        os.replace(temporary, self._record)
        return built, request, stamp

    def _keep(
        self, outcome: tuple[BuiltList, dict[str, Any], tuple[int, int] | None]
    ) -> BuiltList:
        built, request, stamp = outcome
        if self.latest is not None and self.latest is not built:
            remove_files(self.latest.files())
        self.latest = built
        self._answered = request.get("serial")
        self._seen_stamp = stamp
        self.log.info(
            "Built the on-demand list: {entries} entries in {seconds:.3f} s",
            entries=built.entries,
            seconds=built.query_seconds,
            metric="list_build",
        )
        return built

    def gzipped(self, built: BuiltList) -> Deferred[Path]:
        """
        Return the gzip copy of a built list, making it (once) if needed.
        """
        return gzipped_copy(self._calls, built)

    def close(self) -> None:
        """
        Nothing to release: the kept list must survive a restart.
        """
