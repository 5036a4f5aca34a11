"""py-spy stacks are sorted into request stages by their leaf-most known frame."""

from pathlib import Path

from loadtests.profile import read_stacks, stage

MAIN = "thread (0x1): MainThread"
LOOP = "run (asyncio/base_events.py:1)"
HTTP = "handle (uvicorn/protocols/http/httptools_impl.py:1)"
APP = "api_endpoint (_bentoml_impl/server/app.py:1)"


def test_the_leaf_most_specific_frame_names_the_stage() -> None:
    validate = [LOOP, HTTP, APP, "from_http_request (_bentoml_sdk/io_models.py:1)",
                "validate_json (pydantic/main.py:1)"]  # fmt: skip
    assert stage(validate) == "pydantic: validation, JSON parse and dump"
    # Generic frames (the event loop) under our code do not hide it.
    coalesce = [LOOP, HTTP, APP, "Coalescer.score (api/batching.py:1)", "create_future (asyncio/events.py:1)"]  # fmt: skip
    assert stage(coalesce) == "coalescer"
    assert (
        stage([LOOP, "_run_once (asyncio/base_events.py:2)"])
        == "event loop (asyncio, uvloop, anyio)"
    )
    assert stage(["frobnicate (somewhere.py:1)"]) == "other"


def test_threads_are_told_apart_and_counts_add_up(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(
        f"{MAIN};{LOOP};{HTTP} 7\n"
        f"{MAIN};{LOOP};{HTTP};{APP};decode (auth/tokens.py:1) 3\n"
        "thread (0x2): inference-log;run (threading.py:1);write (persistence/inference_log/writer.py:1) 5\n"
        "thread (0x3): AnyIO worker thread;run (threading.py:1);state (persistence/inference_log/writer.py:1) 1\n"
        "thread (0x2): inference-log;run (threading.py:1);copy (psycopg/cursor.py:1);"
        "Connection.wait (psycopg/connection.py:1) 4\n"
    )
    counts = read_stacks(raw)
    assert counts["HTTP server (uvicorn, httptools)"] == 7
    assert counts["auth: JWT, user cache"] == 3
    assert counts["log writer thread (COPY into PostgreSQL)"] == 5
    assert counts["inference record + log submit"] == 1
    assert counts["waiting (epoll, PostgreSQL round trips, sleeps): left out of the shares"] == 4
    assert sum(counts.values()) == 20


def test_a_sample_that_stops_in_the_loop_runner_is_the_loop_waiting() -> None:
    frames = ["main (service.py:1)", "Server.run (uvicorn/server.py:1)", "Runner.run (asyncio/runners.py:118)"]  # fmt: skip
    assert stage(frames).startswith("waiting")
