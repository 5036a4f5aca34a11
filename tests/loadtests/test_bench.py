"""The bench's goal table compares each placement with the best Ray configuration of its shape in
the same pass, and every server's CPU with the floor's; a peer is timed only if its answers match
the service's."""

from loadtests.bench import mismatches, render_floor, render_goal


def cell(rps: float, p50: float, p99: float, number: int) -> dict[str, float]:
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "pass": number}


def test_each_placement_is_compared_with_the_best_of_its_own_shape_in_its_own_pass() -> None:
    rows = [
        ("full", 64, cell(900, 20, 40, 1)),
        ("inline", 64, cell(2000, 5, 10, 1)),
        ("ray-1", 64, cell(1000, 10, 80, 1)),
        ("ray-2", 64, cell(1800, 10, 20, 1)),
        ("ray-2tier", 64, cell(600, 40, 20, 1)),
        # A slower phase of the machine: every server is slower, the ratio is what counts.
        ("full", 64, cell(450, 40, 80, 2)),
        ("inline", 64, cell(1000, 10, 20, 2)),
        ("ray-1", 64, cell(500, 20, 40, 2)),
        ("ray-2", 64, cell(400, 30, 90, 2)),
        ("ray-2tier", 64, cell(300, 80, 40, 2)),
    ]
    lines = [line for line in render_goal(rows).splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert lines == [
        "| 1 | full | 64 | ray-2tier | 1.50 | 0.50 | 2.00 |",  # never against the 1-tier shape
        "| 1 | inline | 64 | ray-2 | 1.11 | 0.50 | 0.50 |",
        "| 2 | full | 64 | ray-2tier | 1.50 | 0.50 | 2.00 |",
        "| 2 | inline | 64 | ray-1 | 2.00 | 0.50 | 0.50 |",
    ]


def test_no_table_without_a_peer() -> None:
    rows = [("full", 16, cell(900, 20, 40, 1)), ("ray-1", 16, cell(900, 20, 40, 1))]
    assert render_goal(rows) == ""  # the 1-tier shape is not the service placement's peer


def test_cpu_per_request_is_set_against_the_floor_of_the_same_pass_and_clients() -> None:
    def cpu(requests: int, **groups: float) -> dict[str, float]:
        return {"requests": requests, "pass": 1, **{f"cpu:{g}": v for g, v in groups.items()}}

    rows = [
        ("floor", 16, {**cpu(10_000, floor=1.0, wrk=5.0, driver=1.0, rest=9.0)}),
        ("full", 16, cpu(2_000, entry=1.0, model=0.5, **{"pg:db": 0.5}, wrk=1.0, rest=3.0)),
        ("full", 64, cpu(2_000, entry=1.0)),  # no floor at 64 clients: not shown
    ]
    lines = [line for line in render_floor(rows).splitlines() if line.startswith("| 1 |")]
    assert lines == ["| 1 | 16 | full | 1.000 | 0.100 | 10.0 |"]


def test_answers_within_the_tolerance_match() -> None:
    assert mismatches([0.25, 0.5], [0.25 + 1e-7, 0.5 - 1e-7]) == []


def test_a_wrong_or_missing_answer_is_a_mismatch() -> None:
    assert mismatches([0.25, 0.5, 0.75], [0.25, 0.5 + 2e-6, 0.75]) == [(1, 0.5, 0.5 + 2e-6)]
    assert [i for i, _, _ in mismatches([0.25, 0.5], [0.25])] == [1]
