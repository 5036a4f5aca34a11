"""GET /model and /model/card: the served model."""

from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session

from api.deps import ServiceDep
from persistence.model_changes import model_changes
from training.schema import Employee

router = APIRouter()


@router.get("/model")
def model_card(svc: ServiceDep) -> dict[str, Any]:
    """The served model: tag, metrics, threshold, the feature schema, the challenger, which
    of the two answers and the recorded promotions and rollbacks (null when the database cannot
    be read)."""
    meta = svc.metadata
    predictor = svc.predictor
    try:
        with Session(svc.engine) as session:
            changes = [c.model_dump(mode="json") for c in model_changes(session=session)]
    except (OperationalError, PoolTimeout):
        changes = None
    return {
        "tag": predictor.model_tag,
        "threshold": svc.threshold,
        "challenger_tag": predictor.models[1].tag if len(predictor.models) == 2 else None,
        "answering": predictor.models[predictor.answering()].tag,
        "model_family": meta.get("model_family"),
        "threshold_rule": meta.get("threshold_rule"),
        "metrics": {"cv": meta.get("cv"), "test": meta.get("test")},
        "data_sha256": meta.get("data_sha256"),
        "explanation": meta.get("explanation"),
        "regularisation": meta.get("regularisation"),
        "trained_at": meta.get("trained_at"),
        "versions": meta.get("versions"),
        "feature_schema": Employee.model_json_schema(),
        "model_changes": changes,
    }


@router.get("/model/card", response_class=HTMLResponse)
def model_card_html(svc: ServiceDep) -> Any:
    """The served model's card (HTML with plots), written when the model was trained."""
    tag = svc.predictor.model_tag
    card = svc.model_ref.custom_objects.get("model_card")
    if card is None:
        raise HTTPException(404, f"{tag} was trained without a model card")
    return HTMLResponse(card, headers={"X-Model-Tag": tag})
