"""The report's command line: the window of --days, and the options it refuses."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from monitoring.__main__ import main, whole_days


def test_days_are_whole_utc_days_before_today_whenever_the_job_starts() -> None:
    yesterday = datetime(2027, 3, 1, tzinfo=UTC), datetime(2027, 3, 2, tzinfo=UTC)
    for now in ("2027-03-02T00:00:00+00:00", "2027-03-02T02:15:00+00:00", "2027-03-02T23:59:59Z"):
        assert whole_days(1, datetime.fromisoformat(now)) == yesterday
    # An offset is read in UTC: 01:00 at +02:00 is still 1 March in UTC.
    assert whole_days(1, datetime(2027, 3, 2, 1, tzinfo=timezone(timedelta(hours=2))))[1] == (
        datetime(2027, 3, 1, tzinfo=UTC)
    )
    assert whole_days(7, datetime(2027, 3, 2, 12, tzinfo=UTC))[0] == datetime(
        2027, 2, 23, tzinfo=UTC
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--days", "0"],
        ["--days", "one"],
        ["--days", "1", "--since", "2027-01-01T00:00:00Z"],
        ["--days", "1", "--until", "2027-01-01T00:00:00Z"],
        ["--min-group-size", "0"],
        ["--adverse-outcome", "maybe"],
    ],
)
def test_bad_windows_are_refused_before_anything_is_read(args: list[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["report", *args])
    assert refused.value.code == 2
