"""The bench's goal table compares full with the best Ray configuration of the same pass."""

from loadtests.bench import render_goal


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
