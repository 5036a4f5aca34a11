"""uvicorn's httptools protocol with limits BentoML does not expose: request header size, and
header and body read time.

BentoML 1.4.40 builds each worker's `uvicorn.Config(app, http="auto", ...)` itself after
importing service.py; `api.internals.install` (run when service.py is imported, so in every
worker of every `bentoml serve`, a container's included) points uvicorn's "auto" protocol at
LimitedHttpToolsProtocol while the gate is active. Imported only then: its base class is
uvicorn's, from api/internals.py. The integration tests (tests/integration/test_http_limits.py)
fail if a BentoML or uvicorn upgrade stops this from taking effect.
"""

import asyncio

from api import internals
from api.middleware import BODY_TIMED_OUT, BODY_TIMEOUT_MESSAGE
from auth.middleware import error_body
from settings import Settings

HttpToolsProtocol, STATUS_LINE = internals.protocol_base()


class LimitedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's httptools protocol with a limit on the request line plus headers (431), on the
    time to send them (408), counted from the connection or the request's first byte, and on the
    time to send the body (408), counted from the end of the headers; each closes the connection.

    Plain uvicorn keeps reading a header for as long as it grows, keeps a connection that never
    completes one open forever (its keep-alive timer only starts after a response), and reads a
    body for as long as bytes trickle in, even after the response (a 401 or a 504 sent before
    the body arrived leaves the connection open for the rest of it).
    """

    max_header_bytes = 32 * 1024
    header_timeout = 10.0
    body_timeout = 20.0

    @classmethod
    def configure(cls, settings: Settings) -> None:
        cls.max_header_bytes = settings.http_max_header_bytes
        cls.header_timeout = settings.http_header_timeout_seconds
        cls.body_timeout = settings.http_body_timeout_seconds

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.in_headers = True
        self.in_body = False
        self.raw_header_bytes = 0  # bytes received since the headers began, body bytes excluded
        self.header_bytes = 0  # the parsed request line and headers
        self.too_large = False
        self.header_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        self._disarm_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.in_headers:
            self.raw_header_bytes += len(data)
        super().data_received(data)
        # A header still incomplete after this chunk: its bytes so far were all header bytes
        # (at most one read beyond the limit is ever buffered).
        if self.in_headers and self.raw_header_bytes > self.max_header_bytes:
            self.reject(431, "request headers exceed the limit")
        # Armed only for a body still incomplete after the read that ended its headers: the
        # usual request (headers and body in one read) costs no timer.
        elif self.in_body and self.body_timer is None and not self.transport.is_closing():
            self.body_timer = self.loop.call_later(self.body_timeout, self._body_too_slow)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_headers = True
        self.header_bytes = 0
        self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.in_headers = False
        self._disarm_header_timer()
        super().on_headers_complete()
        self.in_body = not self.parser.should_upgrade()  # an upgrade is another protocol's

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.in_headers = True  # a pipelined request's headers come next
        self.in_body = False
        self.raw_header_bytes = 0
        self._disarm_body_timer()

    def _count(self, n: int) -> None:
        self.header_bytes += n
        if self.header_bytes > self.max_header_bytes:
            self.too_large = True
            raise ValueError("request headers exceed the limit")  # parser -> send_400_response

    def send_400_response(self, msg: str) -> None:
        if self.too_large:
            self.reject(431, "request headers exceed the limit")
        else:
            super().send_400_response(msg)

    def _arm_header_timer(self) -> None:
        if self.header_timer is None:
            self.header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _disarm_body_timer(self) -> None:
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None

    def _headers_too_slow(self) -> None:
        self.header_timer = None
        if self.in_headers and (self.cycle is None or self.cycle.response_complete):
            self.reject(408, "request headers not received in time")

    def _body_too_slow(self) -> None:
        self.body_timer = None
        if not self.in_body or self.transport.is_closing():
            return
        cycle = self.cycle
        waiting_on_us = self.flow.read_paused or (
            cycle is not None and cycle.waiting_for_100_continue
        )
        if waiting_on_us and not (cycle is not None and cycle.response_complete):
            # The application has not taken what it was sent yet (or not asked for the body):
            # the client is not the slow one. The service's traffic timeout bounds this.
            self.body_timer = self.loop.call_later(self.body_timeout, self._body_too_slow)
            return
        self.reject(408, BODY_TIMEOUT_MESSAGE, "body")

    def reject(self, status: int, msg: str, part: str = "header") -> None:
        """Answer with a JSON error and close the connection (nothing more is read from it); only
        close it when the response to the request whose body is being read has begun."""
        if self.transport.is_closing():
            return
        self._disarm_header_timer()
        self._disarm_body_timer()
        cycle = self.cycle
        if self.in_body and cycle is not None:  # the request whose body is being read
            if not cycle.response_complete:
                # Its application ends here: receive() gets http.disconnect, sends are dropped,
                # and RequestGuard answers it as 408 for the metrics and the access log.
                cycle.disconnected = True
                cycle.scope[BODY_TIMED_OUT] = True  # type: ignore[literal-required]
                cycle.message_event.set()
            if cycle.response_started:  # answered (or answering) already: only close
                self.transport.close()
                return
        body = error_body(msg, [part], msg, f"{part}_limit")
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
