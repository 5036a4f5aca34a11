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
        prediction = scope["path"].startswith("/predict")
        if prediction:
            send = count_rejections(send)
            types = [v for k, v in scope["headers"] if k == b"content-type"]
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
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
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
