"""GET /monitoring/latest: the last monitoring report's summary (admin)."""

from typing import Any

from fastapi import APIRouter, HTTPException

from api.deps import SessionDep
from persistence.reports import latest_report

router = APIRouter()


@router.get("/monitoring/latest")
def monitoring_latest(session: SessionDep) -> Any:
    """The summary of the last monitoring report (admin); 404 before the first report."""
    report = latest_report(session=session)
    if report is None:
        raise HTTPException(404, "no monitoring report yet; run python -m monitoring report")
    return {
        "id": str(report.id),
        "created_at": report.created_at.isoformat(),
        "model_tag": report.model_tag,
        "summary": report.summary,
    }
