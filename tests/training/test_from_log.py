"""Retraining from the log: predictions written through the real inference log, outcomes through
record_outcomes, on SQLite and PostgreSQL; the labelling rules, the minimum and no leakage."""

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlmodel import Session

from persistence.db import make_engine
from persistence.inference_log.sinks import make_sink
from persistence.inference_log.writer import InferenceLog, Record
from persistence.outcomes import OutcomeIn, record_outcomes
from tests.helpers import employee_rows
from training.data import DataError, validate
from training.from_log import from_log, with_original
from training.schema import FEATURES, TARGET, Employee

NOW = datetime.now(UTC).replace(microsecond=0)
SINCE, UNTIL = NOW - timedelta(days=400), NOW - timedelta(days=10)
HORIZON = 90
ROWS = employee_rows(40)


@dataclass
class Logged:
    id: str
    inputs: dict[str, Any]


def write(url: str, tmp: Path, items: list[dict[str, Any]]) -> list[Logged]:
    """Predictions through the service's own write path: write-ahead file, writer, COPY/insert."""
    log = InferenceLog(make_sink(url), tmp / "log", flush_interval=0.05).start()
    records = [
        Record(
            id=str(uuid.uuid4()),
            created_at=item["at"].isoformat(),
            subject="hr",
            route=item.get("route", "/predict/attrition"),
            model_tag="attrition:test",
            batch_id=None,
            position=None,
            inputs=item.get("raw") or Employee.model_validate(item["row"]).model_dump_json(),
            # The model's answer, deliberately the opposite of the outcome: it must not leak.
            probability=0.99 if item.get("outcome") == "stayed" else 0.01,
            label="Yes" if item.get("outcome") == "stayed" else "No",
            threshold=0.5,
            latency_ms=1.0,
            employee_ref=item.get("ref"),
        )
        for item in items
    ]
    log.append(records)
    log.close()
    return [Logged(r.id, json.loads(r.inputs)) for r in records]


def outcomes(url: str, pairs: list[tuple[Logged, str, datetime]], correction: bool = False) -> None:
    engine = make_engine(url)
    items = [OutcomeIn(inference_id=uuid.UUID(p.id), outcome=o, observed_at=at,  # type: ignore[arg-type]
                       correction=correction) for p, o, at in pairs]  # fmt: skip
    with Session(engine) as session:
        record_outcomes(session=session, outcomes=items, subject="hr", is_admin=False, now=NOW)
    engine.dispose()


def labelled(url: str, **kw: Any) -> Any:
    engine = make_engine(url)
    try:
        return from_log(engine=engine, since=SINCE, until=UNTIL, horizon_days=HORIZON,
                        **{"min_rows": 1, **kw})  # fmt: skip
    finally:
        engine.dispose()


def label_of(frame: pd.DataFrame, inputs: dict[str, Any]) -> list[str]:
    """The labels of the rows of `frame` whose features are `inputs`."""
    match = (frame[list(FEATURES)] == pd.Series(inputs)[list(FEATURES)]).all(axis=1)
    return list(frame.loc[match, TARGET])


def test_labelling_rules(url: str, tmp_path: Path) -> None:
    t = SINCE + timedelta(days=100)
    p = write(url, tmp_path, [
        {"row": ROWS[0], "at": t, "outcome": "left"},                  # 0 left within: Yes
        {"row": ROWS[1], "at": t, "outcome": "stayed"},                # 1 stayed within: No
        {"row": ROWS[2], "at": t},                                     # 2 left after the horizon
        {"row": ROWS[3], "at": t},                                     # 3 no outcome
        {"row": ROWS[4], "at": t, "route": "/predict/attrition/what-if"},  # 4 hypothetical
        {"row": ROWS[5], "at": t},                                     # 5 corrected stayed -> left
        {"row": ROWS[6], "at": t, "ref": "E-1"},                       # 6 E-1 earlier: dropped
        {"row": ROWS[7], "at": t + timedelta(days=30), "ref": "E-1"},  # 7 E-1 latest: kept
        {"row": ROWS[8], "at": t + timedelta(days=30), "ref": "E-2"},  # 8 E-2 latest, no outcome
        {"row": ROWS[9], "at": t, "ref": "E-2"},                       # 9 E-2's labelled one: kept
        {"row": ROWS[10], "at": t},                                    # 10 no ref, same inputs
        {"row": ROWS[10], "at": t + timedelta(days=5)},                # 11 ...later: kept
        {"row": ROWS[11], "at": SINCE - timedelta(days=1)},            # 12 before the window
        {"row": ROWS[12], "at": UNTIL},                                # 13 at until: outside
        {"row": ROWS[13], "at": t, "outcome": "left"},                 # 14 exactly at the horizon
    ])  # fmt: skip
    h = timedelta(days=HORIZON)
    outcomes(url, [
        (p[0], "left", t + timedelta(days=10)), (p[1], "stayed", t + timedelta(days=80)),
        (p[2], "left", t + h + timedelta(seconds=1)), (p[4], "left", t + timedelta(days=3)),
        (p[5], "stayed", t + timedelta(days=5)), (p[6], "stayed", t + timedelta(days=20)),
        (p[7], "left", t + timedelta(days=40)), (p[9], "left", t + timedelta(days=7)),
        (p[10], "left", t + timedelta(days=10)), (p[11], "stayed", t + timedelta(days=10)),
        (p[12], "left", t), (p[13], "left", UNTIL + timedelta(days=1)), (p[14], "left", t + h),
    ])  # fmt: skip
    outcomes(url, [(p[5], "left", t + timedelta(days=6))], correction=True)
    got = labelled(url)
    frame = got.frame
    assert list(frame.columns) == [*FEATURES, TARGET]  # inputs and the label, nothing else
    expected = {0: "Yes", 1: "No", 5: "Yes", 7: "Yes", 9: "Yes", 11: "No", 14: "Yes"}
    assert len(frame) == len(expected)
    for i, label in expected.items():
        assert label_of(frame, p[i].inputs) == [label], i
    for i in (2, 3, 4, 6, 12, 13):
        assert label_of(frame, p[i].inputs) == [], i
    assert got.provenance["counts"] == {
        "predictions_in_window": 13,  # 12 and 13 are outside [since, until)
        "with_an_outcome": 10,  # 0 1 2 5 6 7 9 10 11 14 (what-if 4 not counted)
        "what_if_left_out": 1,
        "outcome_after_horizon": 1,
        "duplicates_left_out": 2,  # 6 (E-1) and 10 (same inputs as 11)
        "invalid_inputs_left_out": 0,
        "labelled": 7,
    }
    assert got.provenance["window"] == {"since": SINCE.isoformat(), "until": UNTIL.isoformat()}
    assert got.provenance["horizon_days"] == HORIZON and got.provenance["rows_from_log"] == 7
    assert got.provenance["database"] == url.split(":")[0].split("+")[0]


def test_too_few_labelled_rows_is_refused_with_the_counts(url: str, tmp_path: Path) -> None:
    t = SINCE + timedelta(days=1)
    p = write(url, tmp_path, [{"row": r, "at": t} for r in ROWS[:3]])
    outcomes(url, [(x, "left", t + timedelta(days=1)) for x in p[:2]])
    with pytest.raises(DataError) as info:
        labelled(url, min_rows=3)
    message = str(info.value)
    assert "2 labelled predictions" in message and "at least 3 needed" in message
    assert "predictions in window: 3" in message and "with an outcome: 2" in message
    assert len(labelled(url, min_rows=2).frame) == 2


def test_original_data_is_added_after_the_log_rows(url: str, tmp_path: Path) -> None:
    t = SINCE + timedelta(days=1)
    p = write(url, tmp_path, [{"row": r, "at": t} for r in ROWS[:2]])
    outcomes(url, [(x, "stayed", t + timedelta(days=1)) for x in p])
    got = labelled(url)
    original = validate(pd.DataFrame([{**ROWS[20], TARGET: "Yes"}]))
    both = with_original(got, original, "csv:x.csv")
    assert len(both.frame) == 3 and list(both.frame[TARGET]) == ["No", "No", "Yes"]
    assert both.provenance["rows_from_log"] == 2 and both.provenance["rows_from_original"] == 1
    assert both.provenance["original_source"] == "csv:x.csv"


def test_inputs_the_contract_no_longer_accepts_are_left_out_and_named(
    url: str, tmp_path: Path
) -> None:
    t = SINCE + timedelta(days=1)
    old = json.dumps({k: v for k, v in ROWS[0].items() if k != "OverTime"})  # a field since added
    p = write(url, tmp_path, [{"row": ROWS[0], "at": t, "raw": old}, {"row": ROWS[1], "at": t}])
    outcomes(url, [(x, "left", t + timedelta(days=1)) for x in p])
    got = labelled(url)
    assert len(got.frame) == 1 and label_of(got.frame, p[1].inputs) == ["Yes"]
    assert got.invalid == [p[0].id] and got.provenance["invalid_inference_ids"] == [p[0].id]
    assert got.provenance["counts"]["invalid_inputs_left_out"] == 1
