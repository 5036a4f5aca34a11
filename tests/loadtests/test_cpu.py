"""CPU per process group: deltas of live processes, exited ones through their parent's reaped
time, someone else's processes kept out of our groups."""

import os
import subprocess
import sys

from loadtests.cpu import Classifier, CpuMeter, Seen, attribute

ROOT, CHILD, BRIEF, ORPHAN, PG, OTHER_DB, MINE_DB = 100, 101, 102, 103, 200, 201, 202


def seen(ppid: int, own: float, children: float = 0.0, name: str = "p", *cmd: str) -> Seen:
    return Seen(ppid=ppid, name=name, cmdline=tuple(cmd), own=own, children=children)


def classifier() -> Classifier:
    def postgres(pid: int, s: Seen) -> str | None:
        if s.name != "postgres":
            return None
        return "pg" if "mydb" in s.cmdline or pid == PG else None

    return Classifier(
        roots={ROOT: lambda s: "server"},
        matchers=[postgres],
        reapers={PG: "pg:exited"},
        rest="rest",
    )


def test_live_processes_count_their_own_delta_and_strangers_go_to_the_rest() -> None:
    start = {(ROOT, 1.0): seen(1, 5.0), (CHILD, 2.0): seen(ROOT, 1.0), (7, 3.0): seen(1, 9.0)}
    end = {(ROOT, 1.0): seen(1, 5.5), (CHILD, 2.0): seen(ROOT, 3.0), (7, 3.0): seen(1, 9.25)}
    groups = attribute(start, {**start, **end}, end, classifier())
    assert groups == {"server": 2.5, "rest": 0.25}


def test_a_child_born_and_gone_between_samples_is_counted_from_the_parents_reaped_time() -> None:
    start = {(ROOT, 1.0): seen(1, 5.0, children=0.0)}
    # BRIEF was never sampled; the kernel added its 0.75 s to ROOT's children counter.
    end = {(ROOT, 1.0): seen(1, 5.0, children=0.75)}
    assert attribute(start, {**start, **end}, end, classifier()) == {"server": 0.75}


def test_a_child_that_exits_during_the_run_counts_only_what_it_used_during_the_run() -> None:
    start = {(ROOT, 1.0): seen(1, 5.0), (CHILD, 2.0): seen(ROOT, 2.0, children=0.5)}
    last = {**start, (CHILD, 2.0): seen(ROOT, 2.5, children=0.5)}
    # At exit CHILD had 3.0 own + 0.5 reaped: all 3.5 lands in ROOT's counter.
    end = {(ROOT, 1.0): seen(1, 5.0, children=3.5)}
    assert attribute(start, last, end, classifier()) == {"server": 1.0}


def test_an_orphan_counts_up_to_its_last_sample() -> None:
    start = {(ORPHAN, 4.0): seen(999, 1.0, 0.0, "postgres", "mydb")}
    last = {(ORPHAN, 4.0): seen(999, 1.4, 0.0, "postgres", "mydb")}
    groups = attribute(start, last, {}, classifier())
    assert abs(groups["pg"] - 0.4) < 1e-9


def test_another_users_exited_backend_is_taken_out_of_the_shared_reaper() -> None:
    other = seen(PG, 2.0, 0.0, "postgres", "otherdb")
    mine = seen(PG, 1.0, 0.0, "postgres", "mydb")
    start = {
        (PG, 1.0): seen(1, 10.0, 0.0, "postgres"),
        (OTHER_DB, 2.0): other,
        (MINE_DB, 3.0): mine,
    }
    last = {
        **start,
        (OTHER_DB, 2.0): seen(PG, 2.5, 0.0, "postgres", "otherdb"),
        (MINE_DB, 3.0): seen(PG, 1.2, 0.0, "postgres", "mydb"),
    }
    # Both exited: the postmaster reaped 2.6 (other's life) + 1.5 (mine's) + 0.25 (never seen).
    end = {(PG, 1.0): seen(1, 10.0, 2.6 + 1.5 + 0.25, "postgres")}
    groups = attribute(start, last, end, classifier())
    # Mine's share of the run (1.5 - 1.0), the never-seen 0.25, and other's 0.1 after its last
    # sample (a sample cannot tell it apart).
    assert abs(groups["pg:exited"] - (0.5 + 0.25 + 0.1)) < 1e-9
    assert abs(groups["rest"] - 0.5) < 1e-9  # other's, as far as the samples saw it


def test_the_meter_counts_a_busy_child_that_lived_between_two_samples() -> None:
    me = os.getpid()
    meter = CpuMeter(Classifier(roots={me: lambda s: "bench"}), interval=30)
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    with meter.measure():
        subprocess.run([sys.executable, "-c", spin], check=True)
    # The child existed only between the start and end snapshots: no sample ever saw it.
    assert meter.groups["bench"] >= 0.3
