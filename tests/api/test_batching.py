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


def test_with_a_tracer_each_call_is_a_span_linked_to_the_requests_that_shared_it() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    inside: list[Any] = []

    async def runner(items: list[int]) -> list[float]:
        from opentelemetry import trace

        inside.append(trace.get_current_span().get_span_context())
        await asyncio.sleep(0.01)
        return [float(x) for x in items]

    async def request(c: Coalescer, i: int) -> Any:
        with tracer.start_as_current_span(f"request {i}") as span:
            await c.score([i])
            return span.get_span_context()

    async def main() -> list[Any]:
        c = Coalescer(runner, max_items=100, lanes=1, tracer=tracer)
        return await asyncio.gather(*(request(c, i) for i in range(6)))

    requests = asyncio.run(main())
    batches = [s for s in exporter.get_finished_spans() if s.name == "attrition.batch"]
    assert len(batches) < 6 and max(len(b.links) for b in batches) > 1  # shared calls
    linked = [(link.context.trace_id, link.context.span_id) for b in batches for link in b.links]
    assert sorted(linked) == sorted((r.trace_id, r.span_id) for r in requests)
    for b in batches:  # a child of its first request; the runner call runs inside it
        assert b.parent is not None and b.parent.span_id == b.links[0].context.span_id
        assert b.attributes is not None
        assert b.attributes["attrition.batch.requests"] == len(b.links)
    assert {c.span_id for c in inside} == {b.context.span_id for b in batches}
