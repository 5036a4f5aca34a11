"""Entry-side coalescing: concurrent requests share runner calls and each gets its own answers."""

import asyncio
from typing import Any

import pytest

from api.batching import Coalescer


@pytest.fixture(scope="module")
def coalescer_cls() -> Any:
    return Coalescer


def test_concurrent_requests_are_grouped_and_answered_in_order(coalescer_cls: Any) -> None:
    calls: list[list[int]] = []

    async def runner(items: list[int]) -> list[float]:
        calls.append(items)
        await asyncio.sleep(0.01)
        return [x * 10.0 for x in items]

    async def main() -> list[list[float]]:
        c = coalescer_cls(runner, max_items=100, lanes=1)
        return await asyncio.gather(*(c.score([i, i + 1000]) for i in range(50)))

    results = asyncio.run(main())
    assert results == [[i * 10.0, (i + 1000) * 10.0] for i in range(50)]
    assert len(calls) < 50  # grouped: far fewer runner calls than requests
    assert max(len(c) for c in calls) <= 100


def test_large_requests_go_alone_and_failures_reach_every_waiter(coalescer_cls: Any) -> None:
    calls: list[int] = []

    async def runner(items: list[int]) -> list[float]:
        calls.append(len(items))
        await asyncio.sleep(0)
        if -1 in items:
            raise RuntimeError("runner down")
        return [0.5] * len(items)

    async def main() -> list[Any]:
        c = coalescer_cls(runner, max_items=10, lanes=1)
        big = c.score(list(range(25)))
        bad = [c.score([-1]), c.score([2])]
        return await asyncio.gather(big, *bad, return_exceptions=True)

    big, *rest = asyncio.run(main())
    assert big == [0.5] * 25 and 25 in calls
    assert all(isinstance(r, RuntimeError) for r in rest)
