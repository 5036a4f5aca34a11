"""Pure ASGI middleware for prediction bodies: one JSON content type (415/400), a size limit (413),
and refusals counted by reason."""

from typing import Any

from auth.middleware import error_body, send_json
from persistence.metrics import rejected_counter

REJECTION_REASONS = {
    400: "invalid_input",
    401: "unauthenticated",
    403: "forbidden",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
}
JSON = b"application/json"


def count_rejections(send: Any) -> Any:
    """Wrap `send` to count refused prediction requests by reason (they are not inferences)."""

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            reason = REJECTION_REASONS.get(message["status"], f"http_{message['status']}")
            rejected_counter().labels(reason=reason).inc()
        await send(message)

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
    max_bytes."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        types, lengths = body_headers(scope["headers"])
        if scope["path"].startswith("/predict"):
            send = count_rejections(send)
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
