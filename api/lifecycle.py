"""Worker lifecycle: a heap frozen after start-up, and for zero-error restarts: drain on SIGTERM,
and bounded retries of calls to a model service that is restarting."""

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import TypeVar

import aiohttp
import psutil
from bentoml.exceptions import ServiceUnavailable

from api.internals import WORKER_MODULE
from api.metrics import model_unavailable

log = logging.getLogger("attrition.lifecycle")
T = TypeVar("T")

# How often a draining worker checks whether the workers it serves have exited.
POLL_SECONDS = 0.1


def served_by(process: psutil.Process) -> str | None:
    """The BentoML service a worker process serves (its --service-name), or None."""
    try:
        cmd = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if WORKER_MODULE not in cmd or "--service-name" not in cmd:
        return None
    i = cmd.index("--service-name") + 1
    return cmd[i] if i < len(cmd) else None


def other_services_alive(own: str) -> bool:
    """Whether a worker of another service of this server (a sibling under the same arbiter)
    is still running: in one `bentoml serve` those are the entry workers calling this model."""
    parent = psutil.Process().parent()
    if parent is None:
        return False
    try:
        siblings = parent.children()
    except psutil.NoSuchProcess:
        return False
    return any(
        p.pid != psutil.Process().pid and served_by(p) not in (None, own) and p.is_running()
        for p in siblings
    )


class Drain:
    """SIGTERM handling for one BentoML worker process.

    BentoML's arbiter (circus) sends SIGTERM to every worker of a server at once, and uvicorn
    stops accepting at once. That let the model worker close while the entry workers still had
    requests for it (HTTP 500, FileNotFoundError on the runner's socket). With a Drain the
    worker (1) reports not ready at once, (2) keeps serving for `delay` seconds so load
    balancers stop sending, (3) if `wait_for_callers`, keeps serving until the workers of the
    other services of its server (the entry workers) have exited, at most `timeout` seconds,
    then (4) hands the signal to uvicorn, which stops accepting, finishes in-flight requests
    and runs the shutdown hooks. A second SIGTERM or a SIGINT skips the wait.
    """

    def __init__(
        self, service: str, *, delay: float, wait_for_callers: bool, timeout: float
    ) -> None:
        self.service = service
        self.delay = delay
        self.wait_for_callers = wait_for_callers
        self.timeout = timeout
        self.draining = False
        self._task: asyncio.Task[None] | None = None

    def install(self) -> "Drain":
        """Wrap uvicorn's SIGTERM handler; call from the worker's event loop (main thread)."""
        self._loop = asyncio.get_running_loop()
        self._uvicorn = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def _on_sigterm(self, sig: int, frame: FrameType | None) -> None:
        if self.draining:  # asked twice: stop now
            self._hand_over(sig, frame)
            return
        self.draining = True
        log.info("%s: SIGTERM, draining (not ready from now on)", self.service)
        self._loop.call_soon_threadsafe(self._start, sig, frame)

    def _start(self, sig: int, frame: FrameType | None) -> None:
        self._task = self._loop.create_task(self._drain(sig, frame))

    async def _drain(self, sig: int, frame: FrameType | None) -> None:
        await asyncio.sleep(self.delay)
        if self.wait_for_callers:
            deadline = time.monotonic() + self.timeout
            while other_services_alive(self.service) and time.monotonic() < deadline:
                await asyncio.sleep(POLL_SECONDS)
        log.info("%s: drained, stopping", self.service)
        self._hand_over(sig, frame)

    def _hand_over(self, sig: int, frame: FrameType | None) -> None:
        if callable(self._uvicorn):
            self._uvicorn(sig, frame)


class ModelUnavailable(ServiceUnavailable):
    """The model service could not be reached within the retry budget (HTTP 503)."""


async def call_with_retry(
    call: Callable[[], Awaitable[T]], *, budget_seconds: float, what: str = "model service"
) -> T:
    """`call()`, retried while the connection fails (refused, reset, closed under the request),
    immediately once and then with backoff, for at most `budget_seconds`.

    Only for idempotent calls (scoring is pure). Errors with an answer (a 4xx/5xx from the
    model service) are not retried: they are not a restart.
    """
    deadline = time.monotonic() + budget_seconds
    pause = 0.0
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except aiohttp.ClientConnectionError as exc:
            if time.monotonic() + pause > deadline:
                model_unavailable().inc()
                raise ModelUnavailable(
                    f"{what} unreachable for {budget_seconds:g}s ({attempt} attempts): {exc!r}"
                ) from exc
            if attempt <= 2 or attempt % 20 == 0:
                log.info("%s unreachable (%r); retrying (attempt %d)", what, exc, attempt)
            await asyncio.sleep(pause)
            # The first retry is immediate: a keep-alive connection closed by the server just
            # as the request was written (uvicorn's 5 s idle timeout) is gone, not the service.
            pause = min(max(pause * 2, 0.05), 1.0)


# Allocations between young-generation collections (CPython's default is 700, which collected on
# nearly every request): docs/adr/0003-garbage-collector.md has the choice and its measurement.
GC_GEN0_THRESHOLD = 20_000


def freeze_heap() -> None:
    """Move everything loaded at start-up out of the garbage collector's sight, and collect
    less often.

    A worker holds ~200k long-lived objects (sklearn, pandas, pydantic schemas); every full
    collection walked them all, a 50-150 ms pause that showed up as p99 latency even at one client.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 10, 10)
