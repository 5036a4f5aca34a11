"""Pure ASGI middleware for request bodies: one JSON content type (415/400) and refusals counted
by reason on the prediction routes, a size limit (413), and 400 bodies in the documented shape."""

import json
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api.metrics import rejected_counter
from auth.login import NO_STORE
from auth.middleware import error_body, send_json

REJECTION_REASONS = {
    400: "invalid_input",
    401: "unauthenticated",
    403: "forbidden",
    408: "body_timeout",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
}
JSON = b"application/json"
# Set in a request's scope by the HTTP layer (api/protocol.py) when it gave up waiting for the body
# and answered 408 itself; the application then reads http.disconnect.
BODY_TIMED_OUT = "attrition.body_timed_out"
BODY_TIMEOUT_MESSAGE = "request body not received in time"
# What a 400's detail items say: where and why. BentoML's validation errors also carry pydantic's
# `url`, a link to its documentation that names the library and its version.
ERROR_KEYS = ("loc", "msg", "type")


def count_rejections(send: Any) -> Any:
    """Wrap `send` to count refused prediction requests by reason (they are not inferences)."""

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            reason = REJECTION_REASONS.get(message["status"], f"http_{message['status']}")
            rejected_counter().labels(reason=reason).inc()
        await send(message)

    return wrapped


def plain_errors(send: Any) -> Any:
    """Wrap `send` so that the detail items of a 400 JSON body keep only ERROR_KEYS."""
    start: dict[str, Any] | None = None
    chunks: list[bytes] = []

    async def wrapped(message: dict[str, Any]) -> None:
        nonlocal start
        if message["type"] == "http.response.start" and message["status"] == 400:
            start = message
            return
        if start is None:
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = b"".join(chunks)
        plain = plain_detail(body)
        headers = start.get("headers", [])
        if plain is not None:
            body = plain
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return wrapped


def plain_detail(body: bytes) -> bytes | None:
    """`body` with only ERROR_KEYS in each item of its `detail` list; None if that changes
    nothing (or it is no such body)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("detail"), list):
        return None
    items = doc["detail"]
    plain = [
        {k: v for k, v in item.items() if k in ERROR_KEYS} if isinstance(item, dict) else item
        for item in items
    ]
    if plain == items:
        return None
    doc["detail"] = plain
    # Starlette's JSONResponse encoding, as BentoML's own 400 was written.
    return json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


class BodyTimedOut(BaseException):
    """Unwinds an application whose body the HTTP layer gave up on. Not an Exception: BentoML
    and Starlette would answer (and log) one as a 500 of their own."""


def timed_out_bodies(scope: Any, receive: Any, send: Any) -> Any:
    """Wrap `receive` so that the disconnect the HTTP layer's body timeout causes is answered
    408 (what the client got) through `send`, and then raises BodyTimedOut."""

    async def wrapped() -> Any:
        message = await receive()
        if message["type"] == "http.disconnect" and scope.get(BODY_TIMED_OUT):
            msg = BODY_TIMEOUT_MESSAGE
            await send_json(send, 408, error_body(msg, ["body"], msg, "body_limit"))
            raise BodyTimedOut
        return message

    return wrapped


def media_type(value: bytes) -> bytes:
    """The media type of a Content-Type value, without parameters; case-insensitive (RFC 9110)."""
    return value.split(b";")[0].strip().lower()


def body_headers(headers: list[tuple[bytes, bytes]]) -> tuple[list[bytes], list[bytes]]:
    """The Content-Type and the Content-Length values of a request, in one pass."""
    types, lengths = [], []
    for key, value in headers:
        if key == b"content-type":
            types.append(value)
        elif key == b"content-length":
            lengths.append(value)
    return types, lengths


def plain_json_body(headers: list[tuple[bytes, bytes]], max_bytes: int) -> bool:
    """One JSON Content-Type and one Content-Length within max_bytes: a body RequestGuard admits
    without reading it (the fast path takes only these)."""
    types, lengths = body_headers(headers)
    return (
        len(types) == 1
        and (types[0] == JSON or media_type(types[0]) == JSON)
        and len(lengths) == 1
        and lengths[0].isdigit()
        and int(lengths[0]) <= max_bytes
    )


class RequestGuard:
    """415 for non-JSON prediction bodies, 400 for two Content-Type headers, 413 for bodies over
    max_bytes; every 400 with only ERROR_KEYS in its detail items; 408 for a body the HTTP layer
    gave up on."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        send = plain_errors(send)
        if scope["path"].startswith("/predict"):
            send = count_rejections(send)
        try:
            await self._guard(scope, timed_out_bodies(scope, receive, send), send)
        except BodyTimedOut:
            pass

    async def _guard(self, scope: Any, receive: Any, send: Any) -> None:
        types, lengths = body_headers(scope["headers"])
        if scope["path"].startswith("/predict"):
            if len(types) > 1:
                msg = "more than one Content-Type header"
                body = error_body("invalid request", ["header", "Content-Type"], msg, "duplicate")
                await send_json(send, 400, body)
                return
            ctype = media_type(types[0]) if types else JSON
            if ctype != JSON:
                shown = ctype.decode("latin-1")[:100]
                msg = f"content type {shown!r} is not supported; send application/json"
                body = error_body("unsupported media type", ["header"], msg, "media_type")
                await send_json(send, 415, body)
                return
        length = lengths[0] if lengths else None
        if length is not None and length.isdigit():
            if int(length) > self.max_bytes:
                await self._refuse(send, int(length))
            else:
                await self.app(scope, receive, send)
            return
        # No (valid) Content-Length: read the stream, counting, then replay it.
        messages, total = [], 0
        while True:
            message = await receive()
            messages.append(message)
            total += len(message.get("body", b""))
            if total > self.max_bytes:
                await self._refuse(send, total)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Any:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any, size: int) -> None:
        msg = f"body of {size} bytes exceeds the limit of {self.max_bytes} bytes"
        await send_json(send, 413, error_body("request body too large", ["body"], msg, "too_large"))


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """400 for malformed requests to the FastAPI routes, in the shape the middlewares use:
    the field and the reason, never the submitted value (it may be a password)."""
    assert isinstance(exc, RequestValidationError)
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    headers = NO_STORE if request.url.path == "/auth/token" else None
    body = {"error": "invalid request", "detail": detail}
    return JSONResponse(body, status_code=400, headers=headers)
