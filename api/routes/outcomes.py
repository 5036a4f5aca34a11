"""POST /outcomes: what became of scored employees."""

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import CurrentUser, SessionDep
from api.schemas import RecordedOutcome, RecordedOutcomes
from persistence.outcomes import OutcomesIn, OutcomesRefused, record_outcomes

router = APIRouter()


@router.post(
    "/outcomes",
    status_code=201,
    response_model=RecordedOutcomes,
    responses={400: {}, 404: {}, 409: {}},
)
def post_outcomes(body: OutcomesIn, who: CurrentUser, session: SessionDep) -> Any:
    """What became of scored employees (role `outcomes`): all recorded, or none.

    404 for an id that is unknown or another caller's (admins may use any), 409 for an outcome
    already recorded (send `correction: true` to replace it; the history is kept), 400 for an
    invalid body, an observation in the future or before the prediction.
    """
    try:
        rows = record_outcomes(
            session=session,
            outcomes=body.outcomes,
            subject=who.subject if who else "anonymous",
            is_admin=who is None or who.is_admin,
            now=datetime.now(UTC),
        )
    except OutcomesRefused as refused:
        detail = [{"loc": p.loc, "msg": p.msg, "type": p.type} for p in refused.problems]
        return JSONResponse({"detail": detail}, status_code=refused.status)
    return RecordedOutcomes(
        recorded=[RecordedOutcome.model_validate(r, from_attributes=True) for r in rows]
    )
