"""RequestGuard's rewriting of 400 bodies (api/middleware.py): only where and why, nothing else."""

import asyncio
import json
from typing import Any

from api.middleware import plain_errors

PYDANTIC_400 = {
    "error": "1 validation error for EmployeeInput",
    "detail": [{"type": "literal_error", "loc": ["Gender"], "msg": "Input should be 'Female' or 'Male'",
                "input": "X", "ctx": {"expected": "'Female' or 'Male'"},
                "url": "https://errors.pydantic.dev/2.14/v/literal_error"}],
}  # fmt: skip


def sent_through(status: int, body: bytes, chunks: int = 1) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def respond() -> None:
        wrapped = plain_errors(send)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await wrapped({"type": "http.response.start", "status": status, "headers": headers})
        step = -(-len(body) // chunks)
        for i in range(0, len(body), step):
            more = i + step < len(body)
            await wrapped(
                {"type": "http.response.body", "body": body[i : i + step], "more_body": more}
            )

    asyncio.run(respond())
    return sent


def test_a_400_keeps_only_loc_msg_and_type_in_their_order() -> None:
    start, body = sent_through(400, json.dumps(PYDANTIC_400).encode(), chunks=3)
    doc = json.loads(body["body"])
    assert doc["error"] == PYDANTIC_400["error"]
    assert [list(item) for item in doc["detail"]] == [["type", "loc", "msg"]]
    assert dict(start["headers"])[b"content-length"] == str(len(body["body"])).encode()


def test_other_answers_pass_unchanged() -> None:
    plain = json.dumps(
        {"error": "x", "detail": [{"loc": ["body"], "msg": "m", "type": "t"}]}
    ).encode()
    for status, body in [
        (200, json.dumps(PYDANTIC_400).encode()),
        (400, plain),
        (400, b"not json"),
    ]:
        sent = sent_through(status, body)
        assert b"".join(m.get("body", b"") for m in sent[1:]) == body
