"""The user directory: what the database says about a token's subject, cached per worker, read
at most once at a time per user, and never waited on for longer than a bound.

Every read runs on a few daemon threads of this module. A read the database never answers (a
blackholed network, a stuck connection) holds one of them, not the event loop, not the thread
pool that routes share, and not the process's exit.
"""

import asyncio
import logging
import math
import queue
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import OperationalError as SQLAlchemyOperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session

from auth.users import get_user
from persistence.db import make_engine

log = logging.getLogger("attrition.auth")

# Reads in flight at once per process. The engine holds at most 4 connections, so a database
# that stops answering holds at most 4 readers; the others fail fast on the pool's timeout.
READERS = 8
# /health probes the database at most this often per worker.
PROBE_SECONDS = 2.0
PROBE = "\x00probe"  # the probe's flight key: no subject contains NUL (tokens.check_subject)
# libpq puts the server's own refusal of a connection after its severity and two spaces
# ("failed: FATAL:  too many connections"); its own failures (refused, reset, unresolvable host)
# have no such part.
SERVER_REFUSAL = re.compile(r"\S:  \S")


class LookupTimeout(Exception):
    """The database did not answer a read in time."""


class Unreachable(Exception):
    """The database cannot be reached and the user's state was never read."""


class LookupFailed(Exception):
    """The database answered the read with an error and the user's state was never read."""


def unreachable(exc: BaseException) -> bool:
    """The database could not be reached: a connection that could not be opened (refused,
    timed out, reset: SQLSTATE class 08 or no answer at all) or was lost, the pool's timeout, or
    a read that did not answer in time. Not: an answer from the database, however it failed
    (too many connections, a cancelled query, a lock or statement timeout, a deadlock)."""
    if isinstance(exc, PoolTimeout | LookupTimeout):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(orig, psycopg.OperationalError):
        if orig.sqlstate:
            return orig.sqlstate.startswith("08")
        # Connection errors carry no SQLSTATE in libpq, even when the server sent one.
        return not SERVER_REFUSAL.search(str(orig))
    return False


def transient(exc: BaseException) -> bool:
    """A failure of the database rather than of the read: worth the last known state."""
    return unreachable(exc) or isinstance(exc, SQLAlchemyOperationalError)


@dataclass(frozen=True)
class UserState:
    """What the database says about a token's subject."""

    roles: frozenset[str]
    tokens_valid_after: float  # seconds since the epoch; tokens issued earlier are refused
    verified: bool = True  # False: the database could not be read now; the last known state


@dataclass(frozen=True)
class Entry:
    at: float  # monotonic time of the read, or of the failed read that renewed it
    state: UserState | None  # None: an unknown or disabled user
    verified: bool = True
    known: bool = True  # False: the database was unreachable and no state was ever read

    def resolve(self) -> UserState | None:
        if not self.known:
            raise Unreachable
        if self.state is None or self.verified:
            return self.state
        return replace(self.state, verified=False)


@dataclass(frozen=True)
class Flight:
    """One read in progress; everyone who needs it waits for this one."""

    started: float
    future: Future[Any]


class Readers:
    """Daemon threads running blocking reads from a queue (ThreadPoolExecutor's threads are
    joined at exit, so one stuck read would hold a worker's shutdown)."""

    def __init__(self, threads: int) -> None:
        self.jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]]
        self.jobs = queue.SimpleQueue()
        for n in range(threads):
            threading.Thread(target=self._work, name=f"user-lookup-{n}", daemon=True).start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.jobs.put((future, fn, args))
        return future

    def _work(self) -> None:
        while True:
            future, fn, args = self.jobs.get()
            if not future.set_running_or_notify_cancel():
                continue  # given up on while queued
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
                future.set_exception(exc)


@cache
def readers() -> Readers:
    """This process's readers, started on first use."""
    return Readers(READERS)


async def landed(future: Future[Any], timeout: float) -> bool:
    """Whether `future` is done within `timeout` seconds; it is never cancelled (others may
    wait for it too)."""
    if future.done():
        return True
    if timeout <= 0:
        return False
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def settle() -> None:
        if not done.done():
            done.set_result(None)

    def wake(_: Future[Any]) -> None:
        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:  # that loop has closed
            pass

    future.add_done_callback(wake)
    try:
        await asyncio.wait_for(done, timeout)
    except TimeoutError:
        return False
    return True


class UserDirectory:
    """Active flag, roles and token cut-off of users, cached for `ttl` seconds.

    An entry half its `ttl` old is read again in the background, so a user with steady traffic
    never waits for a read; an expired one is waited for at most `wait` seconds. When the read
    fails for the database's sake (transient()) the last known state is used, unverified, and
    renewed for another `ttl` so later requests do not wait again; with no known state an
    unreachable database raises Unreachable, any other failure LookupFailed.
    """

    def __init__(self, url: str, ttl: float, wait: float) -> None:
        self.url = url
        self.ttl = ttl
        self.wait = wait
        self._engine: Any = None  # opened on first use: one per worker process
        self._lock = threading.Lock()
        self._cache: dict[str, Entry] = {}
        self._flights: dict[str, Flight] = {}
        self._probed = (-math.inf, "unknown")

    def _connect(self) -> Any:
        with self._lock:
            if self._engine is None:
                # The server gives up on a read when its waiters do, and on a lock before that,
                # so a locked table is a lock timeout (the database answered), not a silence.
                self._engine = make_engine(
                    self.url,
                    pool_size=2,
                    pool_timeout=self.wait,
                    statement_timeout=self.wait,
                    lock_timeout=self.wait / 2,
                    application_name="attrition-auth",
                )
            return self._engine

    def _load(self, username: str) -> UserState | None:
        with Session(self._connect()) as session:
            user = get_user(session=session, username=username)
            if user is None or not user.is_active:
                return None
            return UserState(frozenset(user.roles), user.tokens_valid_after.timestamp())

    def _ping(self) -> None:
        with self._connect().connect() as conn:
            conn.execute(text("SELECT 1"))

    async def state(self, username: str) -> UserState | None:
        """The user's state (None: unknown or disabled); the last known one, unverified, when
        the database cannot be read now. Raises Unreachable or LookupFailed (see the class), or
        the read's own error when it failed for another reason."""
        now = time.monotonic()
        entry = self._cache.get(username)
        valid = entry is not None and now - entry.at < self.ttl
        if entry is not None and valid and now - entry.at < self.ttl / 2:
            return entry.resolve()
        flight = self._flights.get(username)
        if flight is None:
            flight = self._start(username, now, self._load, username)
        elif now >= flight.started + self.wait:  # overdue: as good as an unreachable database
            self._give_up(username, flight)
            return self._fallback_or_raise(username, LookupTimeout(), flight.started)
        if valid:  # read again in the background
            assert entry is not None
            return entry.resolve()
        if not await landed(flight.future, flight.started + self.wait - now):
            self._give_up(username, flight)
            return self._fallback_or_raise(username, LookupTimeout(), flight.started)
        if flight.future.cancelled():
            return self._fallback_or_raise(username, LookupTimeout(), flight.started)
        error = flight.future.exception()
        if error is None:
            result: UserState | None = flight.future.result()
            return result
        return self._fallback_or_raise(username, error, flight.started)

    async def database(self) -> str:
        """'ok', 'unreachable' or 'error' (it answered with an error), from a probe at most
        every PROBE_SECONDS, waited for at most `wait` seconds."""
        now = time.monotonic()
        at, answer = self._probed
        if now - at < PROBE_SECONDS:
            return answer
        flight = self._flights.get(PROBE)
        if flight is None or now >= flight.started + self.wait:
            if flight is not None:
                self._give_up(PROBE, flight)
            flight = self._start(PROBE, now, self._ping)
        if not await landed(flight.future, flight.started + self.wait - now):
            answer = "unreachable"
        elif flight.future.cancelled():
            answer = "unreachable"
        elif (error := flight.future.exception()) is None:
            answer = "ok"
        else:
            answer = "unreachable" if unreachable(error) else "error"
        self._probed = (time.monotonic(), answer)
        return answer

    def _start(self, key: str, now: float, fn: Callable[..., Any], *args: Any) -> Flight:
        flight = Flight(now, readers().submit(fn, *args))
        with self._lock:
            self._flights[key] = flight
        flight.future.add_done_callback(lambda f: self._landed(key, flight))
        return flight

    def _give_up(self, key: str, flight: Flight) -> None:
        """Forget a flight that did not answer in time (cancelled if it never started)."""
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.future.cancel()

    def _landed(self, key: str, flight: Flight) -> None:
        """Runs on the reader thread when a read ends: the cache learns its outcome."""
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        if key == PROBE or flight.future.cancelled():
            return
        error = flight.future.exception()
        if error is not None:
            self._fallback(key, error, flight.started)
            return
        with self._lock:
            current = self._cache.get(key)
            # Only a verified read that started after this one knows better.
            if current is None or current.at <= flight.started or not current.verified:
                self._cache[key] = Entry(flight.started, flight.future.result())

    def _fallback(self, username: str, error: BaseException, started: float) -> Entry | None:
        """The entry to use after a read that started at `started` failed, renewed for
        another ttl so the next requests do not wait on the database again; None when the
        failure allows none."""
        if not transient(error):
            return None
        with self._lock:
            entry = self._cache.get(username)
            if entry is not None and entry.at > started:
                return entry  # renewed or read since this read began
            if entry is not None:
                entry = replace(entry, at=time.monotonic(), verified=False)
            elif unreachable(error):
                entry = Entry(time.monotonic(), None, verified=False, known=False)
            else:
                return None
            self._cache[username] = entry
        log.warning(
            "user lookup of %r failed (%s); using %s",
            username,
            type(error).__name__,
            "its last known state" if entry.known else "the token, for predictions only",
        )
        return entry

    def _fallback_or_raise(
        self, username: str, error: BaseException, started: float
    ) -> UserState | None:
        entry = self._fallback(username, error, started)
        if entry is not None:
            return entry.resolve()
        if transient(error):
            raise LookupFailed(str(error)) from error
        raise error


@cache
def directory(url: str, ttl: float, wait: float) -> UserDirectory:
    """The worker's directory for these settings, shared by the middleware and the fast path."""
    return UserDirectory(url, ttl, wait)
