"""The memory table: one row per placement and process group, each placement's PSS summed."""

from loadtests.memory import Memory, render


def test_each_placement_sums_the_pss_of_its_groups() -> None:
    found = [
        Memory("service", "entry", 2, 257.0, 185.0, 401.0),
        Memory("service", "model", 1, 309.0, 237.0, 253.0),
        Memory("inline", "entry", 2, 309.0, 211.0, 488.0),
    ]
    text = render(found)
    assert "| service | model | 1 | 309 | 237 | 253 |" in text
    assert text.splitlines()[-2:] == ["- service: 654 MB PSS in all", "- inline: 488 MB PSS in all"]
