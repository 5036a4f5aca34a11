"""python -m training: its argument checks, and --from-log end to end on each backend (a
challenger lands in the model store; the served line, attrition:latest, does not move)."""

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from settings import get_settings
from tests.training.test_from_log import NOW, SINCE, UNTIL, labelled, outcomes, write
from training.__main__ import main
from training.data import load_reference
from training.schema import FEATURES
from training.train import CHALLENGER_NAME, MODEL_NAME, fingerprint


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--since", "2026-01-01T00:00:00Z"], "--since needs --from-log"),
        (["--with-original"], "--with-original needs --from-log"),
        (["--from-log", "--since", "2026-01-01"], "needs a timezone offset"),
        (["--from-log", "--since", "yesterday"], "Invalid isoformat"),
        (["--exclude-protected", "Age,Salary"], "not features: Salary"),
        (["--from-log", "--csv", "x.csv"], "--csv with --from-log needs --with-original"),
        (["--from-log", "--horizon-days", "0"], "0 is less than 1"),
        (["--folds", "1"], "1 is less than 2"),
    ],
)
def test_bad_arguments_exit_2_naming_the_problem(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.fixture
def configured(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """`url` as the CLI's database (settings are built once per process: rebuilt here)."""
    monkeypatch.setenv("ATTRITION_DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def latest(name: str) -> str | None:
    import bentoml

    try:
        return str(bentoml.models.get(f"{name}:latest").tag)
    except bentoml.exceptions.NotFound:
        return None


def fill(url: str, tmp: Path) -> None:
    """160 real employees scored in the window, each with the outcome the data records."""
    frame = load_reference()
    rows = [*frame[frame["Attrition"] == "Yes"].head(60).to_dict("records"),
            *frame[frame["Attrition"] == "No"].head(100).to_dict("records")]  # fmt: skip
    at = SINCE + timedelta(days=5)
    logged = write(url, tmp, [{"row": {f: r[f] for f in FEATURES}, "at": at,
                               "ref": f"E-{i}"} for i, r in enumerate(rows)])  # fmt: skip
    observed = at + timedelta(days=30)
    outcomes(url, [(p, "left" if r["Attrition"] == "Yes" else "stayed", observed)
                   for p, r in zip(logged, rows, strict=True)])  # fmt: skip


def test_from_log_saves_a_challenger_with_its_provenance(
    configured: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import bentoml

    url = configured
    fill(url, tmp_path)
    served = latest(MODEL_NAME)
    argv = ["--from-log", "--since", SINCE.isoformat(), "--until", UNTIL.isoformat(),
            "--horizon-days", "90", "--min-rows", "150", "--exclude-protected", "--no-compare",
            "--folds", "3", "--repeats", "1", "--card", str(tmp_path / "card.html")]  # fmt: skip
    with threadpool_limits(1):  # small matrices; BLAS threads only contend on a shared machine
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert "From the log: 160 labelled predictions" in out
    tag = out.split("Saved challenger: ")[1].split()[0]
    try:
        assert tag.startswith(f"{CHALLENGER_NAME}:") and latest(MODEL_NAME) == served
        model = bentoml.models.get(tag)
        assert model.info.labels["role"] == "challenger"
        assert model.info.labels["variant"] == "protected-excluded"
        assert model.info.labels["data"] == "inference-log"
        meta: dict[str, Any] = model.info.metadata
        assert meta["protected_attributes_excluded"] == ["Age", "Gender", "MaritalStatus"]
        assert meta["data_sha256"] == fingerprint(labelled(url).frame)
        assert meta["data_window"] == {"since": SINCE.isoformat(), "until": UNTIL.isoformat()}
        log = meta["from_log"]
        assert (log["horizon_days"], log["min_rows"], log["rows_from_log"],
                log["rows_from_original"]) == (90, 150, 160, 0)  # fmt: skip
        assert meta["data_source"] == "inference-log" and meta["n_rows"] == 160
        assert set(meta["proxy_check"]["attributes"]) == {"Age", "Gender", "MaritalStatus"}
        assert meta["onnx"]["included"] or meta["model_family"] != "logistic_regression"
        card = (tmp_path / "card.html").read_text()
        assert "Data from the inference log" in card and model.custom_objects["model_card"] == card
    finally:
        bentoml.models.delete(tag)


def test_from_log_below_the_minimum_exits_2_and_saves_nothing(
    configured: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    at = SINCE + timedelta(days=1)
    logged = write(configured, tmp_path, [{"row": r, "at": at} for r in load_reference()[list(FEATURES)]
                                   .head(3).to_dict("records")])  # fmt: skip
    outcomes(configured, [(p, "left", at) for p in logged])
    before = latest(CHALLENGER_NAME)
    assert main(["--from-log", "--since", SINCE.isoformat(), "--until", NOW.isoformat()]) == 2
    err = capsys.readouterr().err
    assert "error: inference log: refused: 3 labelled predictions" in err
    assert "at least 300 needed" in err
    assert latest(CHALLENGER_NAME) == before


def test_a_csv_with_too_few_of_a_label_exits_2_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = load_reference()
    rows = pd.concat(
        [frame[frame["Attrition"] == "Yes"].head(3), frame[frame["Attrition"] == "No"].head(20)]
    )
    rows.to_csv(tmp_path / "few.csv", index=False)
    assert main(["--csv", str(tmp_path / "few.csv"), "--no-save"]) == 2
    err = capsys.readouterr().err
    assert "too few rows of a label for 5-fold CV (need 10 each; have Yes:" in err
