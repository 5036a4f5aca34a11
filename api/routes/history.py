"""GET /predict/history[/{id}]: recorded predictions; non-admins see only their own."""

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.exceptions import RequestValidationError

from api.deps import CurrentUser, SessionDep
from api.schemas import HistoryPage
from persistence.history import BadCursor, FilterText, FilterTime, get_inference, list_inferences
from persistence.models import InferencePublic

router = APIRouter()


@router.get("/predict/history", response_model=HistoryPage)
def history(
    who: CurrentUser,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    since: Annotated[
        FilterTime | None, Query(description="Inclusive lower bound (ISO 8601 with offset).")
    ] = None,
    until: Annotated[
        FilterTime | None, Query(description="Exclusive upper bound (ISO 8601 with offset).")
    ] = None,
    label: Annotated[Literal["Yes", "No"] | None, Query()] = None,
    min_probability: Annotated[float | None, Query(ge=0, le=1)] = None,
    model_tag: Annotated[FilterText | None, Query(max_length=128)] = None,
    subject: Annotated[FilterText | None, Query(max_length=255, description="Admins only.")] = None,
) -> Any:
    """Recorded predictions, newest first; `history` users see only their own."""
    if who is not None and not who.is_admin:
        if subject is not None and subject != who.subject:
            raise HTTPException(403, "only admins may read another subject's history")
        subject = who.subject
    try:
        items, next_cursor = list_inferences(
            session=session, limit=limit, cursor=cursor, subject=subject, since=since,
            until=until, label=label, min_probability=min_probability, model_tag=model_tag,
        )  # fmt: skip
    except BadCursor as exc:
        error = {"loc": ("query", "cursor"), "msg": str(exc), "type": "value_error"}
        raise RequestValidationError([error]) from exc
    return HistoryPage(
        items=[InferencePublic.model_validate(i) for i in items], next_cursor=next_cursor
    )


@router.get("/predict/history/{inference_id}", response_model=InferencePublic)
def history_item(who: CurrentUser, session: SessionDep, inference_id: uuid.UUID) -> Any:
    """One recorded prediction; someone else's is 404 for non-admins."""
    item = get_inference(session=session, inference_id=inference_id)
    if item is None or (who is not None and not who.is_admin and item.subject != who.subject):
        raise HTTPException(404, "no such inference")
    return InferencePublic.model_validate(item)
