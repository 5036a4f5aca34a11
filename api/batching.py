"""The entry worker's side of batching: concurrent requests share runner calls."""

import asyncio
from collections import deque
from typing import Any

from opentelemetry.trace import SpanContext, Tracer

from api.tracing import batch_span, current_context


class Coalescer:
    """Opportunistic batching in the entry worker: while `lanes` runner calls are in flight, new
    requests wait and then go together in one call. An idle service adds no delay; a busy one
    sends the runner a few large calls instead of many small ones, whose per-call HTTP cost
    (not the model) dominated the runner's CPU. The runner still batches adaptively across calls.
    """

    def __init__(
        self, call: Any, *, max_items: int, lanes: int, tracer: Tracer | None = None
    ) -> None:
        self.call = call
        self.max_items = max_items
        self.lanes = lanes
        self.tracer = tracer  # with tracing on: a span per call (api/tracing.py batch_span)
        self.busy = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.pending: deque[tuple[list[Any], asyncio.Future[list[Any]], SpanContext | None]] = (
            deque()
        )

    async def score(self, items: list[Any]) -> list[Any]:
        if len(items) >= self.max_items:  # a large batch request goes on its own
            if self.tracer is None:
                return list(await self.call(items))
            with batch_span(self.tracer, [current_context()], len(items)):
                return list(await self.call(items))
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.pending.append((items, future, current_context() if self.tracer else None))
        if self.busy < self.lanes:
            self.busy += 1
            task = asyncio.create_task(self._drain())
            self.tasks.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self.tasks.discard)
        return await future

    async def _drain(self) -> None:
        try:
            while self.pending:
                group: list[tuple[list[Any], asyncio.Future[list[Any]]]] = []
                contexts: list[SpanContext] = []
                size = 0
                while self.pending and (
                    not group or size + len(self.pending[0][0]) <= self.max_items
                ):
                    items, future, context = self.pending.popleft()
                    group.append((items, future))
                    if context is not None:
                        contexts.append(context)
                    size += len(items)
                try:
                    result = await self._call([x for items, _ in group for x in items], contexts)
                except Exception as exc:  # noqa: BLE001 - every waiter gets the failure
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                start = 0
                for items, future in group:
                    if not future.done():
                        future.set_result(result[start : start + len(items)])
                    start += len(items)
        finally:
            self.busy -= 1

    async def _call(self, items: list[Any], contexts: list[SpanContext]) -> list[Any]:
        if self.tracer is None:
            return list(await self.call(items))
        with batch_span(self.tracer, contexts, len(items)):
            return list(await self.call(items))
