"""The benchmark's floor: a bare ASGI app on uvicorn (httptools, uvloop) that reads and parses the
employee JSON and answers a constant. No framework, no auth, no validation, no model: what one
HTTP request with a JSON body costs in Python on this machine, below which no Python server gets.

python -m loadtests.floor --port 8000
"""

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from tests.harness import ServerProcess

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ANSWER = json.dumps({"probability": 0.5}).encode()
REFUSAL = json.dumps({"detail": "the body must be a JSON object"}).encode()
MAX_BODY_BYTES = 64 * 1024  # far above one employee; the floor must not buffer without bound


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if it is larger than MAX_BODY_BYTES."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def respond(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Any POST: 200 and a constant for a JSON object body, 400 otherwise."""
    if scope["type"] != "http":  # uvicorn runs it with lifespan="off"
        return
    body = await read_body(receive)
    try:
        parsed = json.loads(body) if body else None
    except ValueError:  # bad JSON, bad UTF-8
        parsed = None
    if not isinstance(parsed, dict):
        await respond(send, 400, REFUSAL)
        return
    await respond(send, 200, ANSWER)


def event_loop() -> str:
    """uvloop where installed (BentoML brings it on Linux), else asyncio's."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


class FloorServer(ServerProcess):
    """The floor as a server subprocess of the bench; ready once it answers a real employee."""

    def __init__(self, *, sample: bytes, log: Path, env: dict[str, str]) -> None:
        self.sample = sample
        super().__init__(env, log=log, timeout=60)

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-m", "loadtests.floor", "--port", str(port)]

    def ready(self) -> bool:
        response = httpx.post(f"{self.url}/predict/attrition", content=self.sample, timeout=5)
        return response.status_code == 200

    def port_taken(self, log: str) -> bool:
        return "address already in use" in log.lower()


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m loadtests.floor", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        http="httptools",
        loop=event_loop(),
        lifespan="off",
        access_log=False,  # the service's fast path batches its access log; a floor has none
        log_level="warning",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
