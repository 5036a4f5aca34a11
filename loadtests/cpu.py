"""CPU time per process group over a load run, short-lived processes included.

Every process on the machine is read when the run starts and ends (and every `interval` seconds
in between), and each gets a group from a classifier. A process alive at both ends contributes
its user+system delta. A process that exits during the run is taken from its parent's
children_user/children_system (the kernel adds a reaped child's whole lifetime there, so even a
process born and gone between two samples is counted); its CPU before the run is subtracted.
Only parents named as reapers are trusted that way. A process whose parent is not one (an
orphan), or that belongs to the rest of the machine (another user's backend of a shared
PostgreSQL), counts up to its last sample, a lower bound.
"""

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil

# (pid, create_time) identifies a process across samples (pids are reused).
Key = tuple[int, float]


@dataclass(frozen=True)
class Seen:
    ppid: int
    name: str
    cmdline: tuple[str, ...]
    own: float  # user + system seconds
    children: float  # children_user + children_system seconds (reaped descendants)


def snapshot() -> dict[Key, Seen]:
    """Every process readable now."""
    seen: dict[Key, Seen] = {}
    for p in psutil.process_iter(["ppid", "name", "cmdline", "cpu_times", "create_time"]):
        info = p.info
        times = info["cpu_times"]
        if times is None or info["create_time"] is None:  # gone or unreadable
            continue
        seen[(p.pid, info["create_time"])] = Seen(
            ppid=info["ppid"] or 0,
            name=info["name"] or "",
            cmdline=tuple(info["cmdline"] or ()),
            own=times.user + times.system,
            children=times.children_user + times.children_system,
        )
    return seen


def ancestors(pid: int, ppids: dict[int, int]) -> Iterator[int]:
    """pid, its parent, its grandparent... as far as the snapshot knows them."""
    hops = 0
    while pid and hops < 64:
        yield pid
        pid = ppids.get(pid, 0)
        hops += 1


@dataclass
class Classifier:
    """Maps a process to a group name; processes under no known root are `rest`."""

    roots: dict[int, Callable[[Seen], str]] = field(default_factory=dict)
    """Owned process trees: root pid -> group of a process in that tree."""
    matchers: list[Callable[[int, Seen], str | None]] = field(default_factory=list)
    """Processes outside those trees (PostgreSQL...): the first non-None answer wins."""
    reapers: dict[int, str] = field(default_factory=dict)
    """Extra parents whose reaped children go to the named group (e.g. the postmaster)."""
    rest: str = "rest of machine"

    def group(self, pid: int, seen: Seen, ppids: dict[int, int]) -> str:
        for ancestor in ancestors(pid, ppids):
            if ancestor in self.roots:
                return self.roots[ancestor](seen)
        for match in self.matchers:
            name = match(pid, seen)
            if name is not None:
                return name
        return self.rest

    def reaper_group(self, pid: int, seen: Seen, ppids: dict[int, int]) -> str | None:
        """Where the children this process reaps are counted, or None if it is not trusted."""
        if pid in self.reapers:
            return self.reapers[pid]
        if any(a in self.roots for a in ancestors(pid, ppids)):
            return self.group(pid, seen, ppids)
        return None


def attribute(
    start: dict[Key, Seen],
    last: dict[Key, Seen],
    end: dict[Key, Seen],
    classifier: Classifier,
) -> dict[str, float]:
    """CPU seconds per group between `start` and `end` (`last`: latest sample of each process)."""
    totals: dict[str, float] = {}

    def add(group: str, seconds: float) -> None:
        totals[group] = totals.get(group, 0.0) + seconds

    # Parents are looked up by pid; the newest snapshot that knows a pid wins.
    ppids = {pid: s.ppid for (pid, _), s in start.items()}
    ppids.update({pid: s.ppid for (pid, _), s in last.items()})
    ppids.update({pid: s.ppid for (pid, _), s in end.items()})
    end_pids = {key[0]: key for key in end}
    # Per reaper: CPU in its reaped-children counter that is not this run's or not its group's.
    not_reaped_here: dict[int, float] = {}

    for key, seen in end.items():
        pid = key[0]
        before = start.get(key)
        add(classifier.group(pid, seen, ppids), seen.own - (before.own if before else 0.0))
    for key, seen in last.items():
        if key in end:
            continue
        pid = key[0]
        before = start.get(key)
        group = classifier.group(pid, seen, ppids)
        parent_key = end_pids.get(seen.ppid)
        reaper = classifier.reaper_group(seen.ppid, end[parent_key], ppids) if parent_key else None
        if reaper is not None and group != classifier.rest:
            # Its whole life (own and its own reaped children) lands in the parent's counter:
            # count it there, less what it had used before the run.
            if before:
                not_reaped_here[seen.ppid] = (
                    not_reaped_here.get(seen.ppid, 0.0) + before.own + before.children
                )
            continue
        if reaper is not None:
            # Someone else's (another user's backend of a shared PostgreSQL): out of the
            # reaper's counter, into the rest, as far as the samples saw it.
            not_reaped_here[seen.ppid] = (
                not_reaped_here.get(seen.ppid, 0.0) + seen.own + seen.children
            )
        add(group, seen.own - (before.own if before else 0.0))
    for key, seen in end.items():
        pid = key[0]
        reaper = classifier.reaper_group(pid, seen, ppids)
        if reaper is None:
            continue
        before = start.get(key)
        delta = seen.children - (before.children if before else 0.0) - not_reaped_here.get(pid, 0)
        add(reaper, delta)
    return {g: max(s, 0.0) for g, s in totals.items()}


class CpuMeter:
    """Samples every process while a load runs; `groups` holds CPU seconds per group after."""

    def __init__(self, classifier: Classifier, interval: float = 0.5) -> None:
        self.classifier = classifier
        self.interval = interval
        self.groups: dict[str, float] = {}
        self._stop = threading.Event()
        self._last: dict[Key, Seen] = {}
        self._start: dict[Key, Seen] = {}

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._last.update(snapshot())

    @contextmanager
    def measure(self) -> Iterator["CpuMeter"]:
        self._start = snapshot()
        self._last = dict(self._start)
        sampler = threading.Thread(target=self._sample, name="cpu-sampler", daemon=True)
        sampler.start()
        try:
            yield self
        finally:
            self._stop.set()
            sampler.join()
            end = snapshot()
            self._last.update(end)
            self.groups = attribute(self._start, self._last, end, self.classifier)
