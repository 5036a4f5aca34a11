"""The bench's goal table compares full with the best Ray configuration of the same pass; a peer
is timed only if its answers match the service's."""

from loadtests.bench import mismatches, render_goal


def cell(rps: float, p50: float, p99: float, number: int) -> dict[str, float]:
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "pass": number}


def test_each_pass_is_compared_with_its_own_best_ray_configuration() -> None:
    rows = [
        ("full", 64, cell(900, 20, 40, 1)),
        ("ray-1", 64, cell(1000, 10, 80, 1)),
        ("ray-2", 64, cell(1800, 10, 20, 1)),
        # A slower phase of the machine: every server is slower, the ratio is what counts.
        ("full", 64, cell(450, 40, 80, 2)),
        ("ray-1", 64, cell(500, 20, 40, 2)),
        ("ray-2", 64, cell(400, 30, 90, 2)),
    ]
    lines = [
        line
        for line in render_goal(rows).splitlines()
        if line.startswith("| 1 |") or line.startswith("| 2 |")
    ]
    assert lines == [
        "| 1 | 64 | ray-2 | 0.50 | 2.00 | 2.00 |",
        "| 2 | 64 | ray-1 | 0.90 | 2.00 | 2.00 |",
    ]


def test_no_table_without_a_peer() -> None:
    assert render_goal([("full", 16, cell(900, 20, 40, 1))]) == ""


def test_answers_within_the_tolerance_match() -> None:
    assert mismatches([0.25, 0.5], [0.25 + 1e-7, 0.5 - 1e-7]) == []


def test_a_wrong_or_missing_answer_is_a_mismatch() -> None:
    assert mismatches([0.25, 0.5, 0.75], [0.25, 0.5 + 2e-6, 0.75]) == [(1, 0.5, 0.5 + 2e-6)]
    assert [i for i, _, _ in mismatches([0.25, 0.5], [0.25])] == [1]
