"""Bad input to the FastAPI routes (history, login) on SQLite and PostgreSQL: 400 naming the field
and the reason, never a 500, for whole classes of bad values; every route's 400 in the same shape,
naming no library and echoing no input."""

import base64
import json
from typing import Any

import httpx
import pytest

from tests.conftest import Stack
from tests.helpers import employee_rows

pytestmark = pytest.mark.integration

UNSTORABLE = {
    "nul": "a\x00b",
    "control": "a\x01b",
    "newline": "a\nb",
    "delete": "a\x7fb",
    "c1_control": "a\x85b",
}


def forged(raw: Any) -> str:
    """A cursor with this JSON inside, encoded the way the API encodes its own."""
    return base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")


ID = "00000000-0000-0000-0000-000000000000"
# As the API writes one: a time with microseconds, 87 bytes of JSON, so no base64 padding.
VALID = {"t": "2026-01-01T00:00:00.392825+00:00", "id": ID}
BAD_QUERIES: dict[str, tuple[dict[str, str], str]] = {
    **{f"model_tag_{k}": ({"model_tag": v}, "model_tag") for k, v in UNSTORABLE.items()},
    **{f"subject_{k}": ({"subject": v}, "subject") for k, v in UNSTORABLE.items()},
    "since_before_year_1_in_utc": ({"since": "0001-01-01T00:00:00+05:00"}, "since"),
    "since_far_before_year_1": ({"since": "0001-01-01T00:00:00+14:00"}, "since"),
    "until_after_year_9999_in_utc": ({"until": "9999-12-31T23:59:59-05:00"}, "until"),
    "until_far_after_year_9999": ({"until": "9999-12-31T23:59:59-14:00"}, "until"),
    "since_without_offset": ({"since": "2026-01-01T00:00:00"}, "since"),
    "until_year_10000": ({"until": "10000-01-01T00:00:00Z"}, "until"),
    "since_month_13": ({"since": "2026-13-01T00:00:00Z"}, "since"),
    "cursor_naive_time": ({"cursor": forged({"t": "2026-01-01T00:00:00", "id": ID})}, "cursor"),
    "cursor_before_year_1_in_utc": (
        {"cursor": forged({"t": "0001-01-01T00:00:00+05:00", "id": ID})},
        "cursor",
    ),
    "cursor_after_year_9999_in_utc": (
        {"cursor": forged({"t": "9999-12-31T23:59:59-05:00", "id": ID})},
        "cursor",
    ),
    "cursor_time_a_number": ({"cursor": forged({"t": 1700000000, "id": ID})}, "cursor"),
    "cursor_id_a_number": ({"cursor": forged({"t": "2026-01-01T00:00:00Z", "id": 5})}, "cursor"),
    "cursor_id_not_a_uuid": (
        {"cursor": forged({"t": "2026-01-01T00:00:00Z", "id": "x"})},
        "cursor",
    ),
    "cursor_missing_id": ({"cursor": forged({"t": "2026-01-01T00:00:00Z"})}, "cursor"),
    "cursor_a_list": ({"cursor": forged(["2026-01-01T00:00:00Z", ID])}, "cursor"),
    "cursor_nested": ({"cursor": base64.urlsafe_b64encode(b"[" * 140).decode()}, "cursor"),
    "cursor_nul_in_time": ({"cursor": forged({"t": "2026-01-01\x00", "id": ID})}, "cursor"),
    "cursor_not_base64": ({"cursor": "!!!"}, "cursor"),
    # base64 decoding skips what is not in its alphabet: these decoded as the cursor they hold.
    **{
        f"cursor_{name}_inserted": ({"cursor": forged(VALID)[:8] + c + forged(VALID)[8:]}, "cursor")
        for name, c in [("nul", "\x00"), ("space", " "), ("newline", "\n"), ("dot", ".")]
    },
    "cursor_padded": ({"cursor": forged(VALID) + "=="}, "cursor"),
    "cursor_not_json": ({"cursor": base64.urlsafe_b64encode(b"\xff\xfe").decode()}, "cursor"),
    "cursor_too_long": ({"cursor": "a" * 201}, "cursor"),
    "limit_zero": ({"limit": "0"}, "limit"),
    "limit_over_500": ({"limit": "501"}, "limit"),
    "limit_not_a_number": ({"limit": "ten"}, "limit"),
    "min_probability_nan": ({"min_probability": "nan"}, "min_probability"),
    "min_probability_infinity": ({"min_probability": "inf"}, "min_probability"),
    "min_probability_over_1": ({"min_probability": "2"}, "min_probability"),
    "label_unknown": ({"label": "Maybe"}, "label"),
}


@pytest.mark.parametrize("case", BAD_QUERIES, ids=list(BAD_QUERIES))
def test_bad_history_query_is_a_400_naming_the_field(backend_stack: Stack, case: str) -> None:
    params, field = BAD_QUERIES[case]
    r = httpx.get(
        f"{backend_stack.server.url}/predict/history",
        params=params,
        headers=backend_stack.headers("admin"),
        timeout=30,
    )
    assert r.status_code == 400, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["query", field] and error["msg"], error


@pytest.mark.parametrize("value", ["not-a-uuid", "%00", "1" * 40], ids=["word", "nul", "long"])
def test_bad_history_id_is_a_400(backend_stack: Stack, value: str) -> None:
    r = httpx.get(
        f"{backend_stack.server.url}/predict/history/{value}",
        headers=backend_stack.headers("admin"),
        timeout=30,
    )
    assert r.status_code == 400, r.text
    assert r.json()["detail"][0]["loc"] == ["path", "inference_id"]


@pytest.mark.parametrize("case", UNSTORABLE, ids=list(UNSTORABLE))
def test_login_username_with_control_characters_is_a_400(backend_stack: Stack, case: str) -> None:
    form = {"username": UNSTORABLE[case], "password": "whatever-password"}
    r = httpx.post(f"{backend_stack.server.url}/auth/token", data=form, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "username"]


ODD_VALUES = ["%00", "%ff%fe", "%ed%a0%80", "%", "%zz", "'%20OR%201=1--", "a" * 4000, "[]", "{}"]
QUERY_NAMES = ["model_tag", "subject", "since", "until", "cursor", "limit", "label",
               "min_probability"]  # fmt: skip


def test_no_odd_query_string_gets_a_500(backend_stack: Stack) -> None:
    base = backend_stack.server.url
    headers = backend_stack.headers("admin")
    seen = {}
    with httpx.Client(timeout=30, headers=headers) as client:
        for value in ODD_VALUES:
            for name in QUERY_NAMES:
                for path in ("/predict/history", f"/predict/history/{value}", "/model", "/health"):
                    # Sent as written: httpx would re-encode the percent signs.
                    url = httpx.URL(f"{base}{path}", query=f"{name}={value}".encode())
                    seen[(path, name, value)] = client.get(url).status_code
    errors = {key: code for key, code in seen.items() if code >= 500}
    assert not errors, errors


ODD_LOGINS: dict[str, tuple[dict[str, str], bytes]] = {
    "percent_garbage": ({"content-type": "application/x-www-form-urlencoded"}, b"username=%ff%00&password=%"),
    "multipart_without_boundary": ({"content-type": "multipart/form-data"}, b"username=x&password=y"),
    "json_body": ({"content-type": "application/json"}, b'{"username": "x", "password": "y"}'),
    "no_content_type": ({}, b"username=x&password=y"),
    "repeated_fields": ({"content-type": "application/x-www-form-urlencoded"}, b"username=a&username=b&password=c"),
    "empty_body": ({"content-type": "application/x-www-form-urlencoded"}, b""),
}  # fmt: skip


@pytest.mark.parametrize("case", ODD_LOGINS, ids=list(ODD_LOGINS))
def test_no_odd_login_body_gets_a_500(backend_stack: Stack, case: str) -> None:
    headers, body = ODD_LOGINS[case]
    r = httpx.post(
        f"{backend_stack.server.url}/auth/token", content=body, headers=headers, timeout=30
    )
    assert 400 <= r.status_code < 500, r.text


@pytest.mark.parametrize(
    "content_type",
    [
        "application/JSON",
        "APPLICATION/JSON",
        "Application/Json; charset=UTF-8",
        "application/json ;",
    ],
)
def test_media_types_compare_case_insensitively(backend_stack: Stack, content_type: str) -> None:
    row = employee_rows(1)[0]
    for path, body in (
        ("/predict/attrition", row),
        ("/predict/attrition/batch", {"employees": [row]}),
    ):
        r = httpx.post(
            f"{backend_stack.server.url}{path}",
            content=json.dumps(body),
            headers={**backend_stack.headers("predictor"), "Content-Type": content_type},
            timeout=30,
        )
        assert r.status_code == 200, r.text


def test_two_content_type_headers_on_prediction_routes_are_refused(backend_stack: Stack) -> None:
    row = employee_rows(1)[0]
    for path, body in (
        ("/predict/attrition", row),
        ("/predict/attrition/batch", {"employees": [row]}),
    ):
        for pair in (["application/json", "application/json"], ["application/json", "text/plain"]):
            headers = [
                *backend_stack.headers("predictor").items(),
                *[("Content-Type", t) for t in pair],
            ]
            r = httpx.post(
                f"{backend_stack.server.url}{path}",
                content=json.dumps(body),
                headers=headers,
                timeout=30,
            )
            assert r.status_code == 400, r.text
            assert r.json()["detail"][0]["loc"] == ["header", "Content-Type"]


SECRET = "do-not-echo-4711"
ROW = employee_rows(1)[0]
# Every kind of route that answers 400 to a malformed body or query, each with the value above
# where a value can be wrong.
BAD_REQUESTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "fast_path_field": ("POST", "/predict/attrition", {"json": {**ROW, "Gender": SECRET}}),
    "fast_path_json": ("POST", "/predict/attrition", {"content": b'{"Age": ', "headers": {"content-type": "application/json"}}),
    "explain_field": ("POST", "/predict/attrition?explain=true", {"json": {**ROW, "Age": SECRET}}),
    "query": ("POST", f"/predict/attrition?top_k={SECRET}", {"json": ROW}),
    "batch_row": ("POST", "/predict/attrition/batch", {"json": {"employees": [ROW, {**ROW, "OverTime": SECRET}]}}),
    "batch_empty": ("POST", "/predict/attrition/batch", {"json": {"employees": []}}),
    "what_if_change": ("POST", "/predict/attrition/what-if", {"json": {"employee": ROW, "scenarios": [{"changes": {"Age": SECRET}}]}}),
    "outcomes": ("POST", "/outcomes", {"json": {"outcomes": [{"inference_id": SECRET, "outcome": "left", "observed_at": "2026-01-01T00:00:00Z"}]}}),
    "login": ("POST", "/auth/token", {"data": {"username": "a\x00" + SECRET, "password": SECRET}}),
    "history": ("GET", "/predict/history", {"params": {"since": SECRET}}),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_every_400_is_the_documented_shape_naming_no_library(stack: Stack, case: str) -> None:
    """{"error", "detail": [{loc, msg, type}]}: no pydantic `url` (it names the library and its
    version), no `input` or `ctx`, and the submitted value nowhere."""
    method, path, given = BAD_REQUESTS[case]
    request = dict(given)
    headers = {**stack.headers("admin"), **request.pop("headers", {})}
    r = httpx.request(method, f"{stack.server.url}{path}", headers=headers, timeout=30, **request)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["detail"] and all(set(item) == {"loc", "msg", "type"} for item in body["detail"])
    assert "pydantic" not in r.text.lower() and SECRET not in r.text, r.text
    assert int(r.headers["content-length"]) == len(r.content)
