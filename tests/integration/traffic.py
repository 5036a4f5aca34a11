"""Steady prediction traffic from client threads, every request recorded with its timing and
outcome, for the shutdown, restart and split-topology tests."""

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Outcome:
    sent: float  # time.monotonic() when the request was sent
    done: float
    status: int | None  # None: no HTTP answer (connection refused, reset, closed)
    request_id: str | None = None
    error: str = ""


@dataclass
class Traffic:
    """`clients` threads posting single predictions to `url` until stop(), each on a keep-alive
    connection of its own (as a load balancer or an application's pool would)."""

    url: str
    headers: dict[str, str]
    rows: list[dict[str, Any]]
    clients: int = 16
    timeout: float = 60
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(n,), daemon=True)
            for n in range(self.clients)
        ]

    def start(self) -> "Traffic":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> "Traffic":
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 10)
        return self

    def _client(self, n: int) -> None:
        i = n
        with httpx.Client(headers=self.headers, timeout=self.timeout) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    r = client.post(
                        f"{self.url}/predict/attrition", json=self.rows[i % len(self.rows)]
                    )
                    rid = r.json().get("request_id") if r.status_code == 200 else None
                    outcome = Outcome(sent, time.monotonic(), r.status_code, rid, r.text[:300])
                except httpx.HTTPError as exc:
                    outcome = Outcome(sent, time.monotonic(), None, error=repr(exc))
                    time.sleep(0.05)  # the server is going away; do not spin
                with self._lock:
                    self.outcomes.append(outcome)
                i += self.clients

    def ok_ids(self) -> list[str]:
        return [o.request_id for o in self.outcomes if o.status == 200 and o.request_id]

    def server_errors(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status is not None and o.status >= 500]

    def counts(self) -> Counter[str]:
        return Counter(str(o.status) if o.status else "no answer" for o in self.outcomes)
