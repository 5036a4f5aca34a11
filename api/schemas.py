"""The request and response schemas of the HTTP routes (the employee itself is
training/schema.py's contract, shared with training)."""

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from persistence.models import InferencePublic
from settings import get_settings
from training.explain import DEFAULT_TOP_K, Explanation
from training.schema import FEATURES, EmployeeInput


class Prediction(BaseModel):
    """Attrition risk for one employee."""

    request_id: str = Field(description="Id of this prediction (also the X-Request-ID header).")
    probability: float = Field(description="Probability that the employee leaves.", ge=0, le=1)
    label: Literal["Yes", "No"] = Field(description="'Yes' when probability >= threshold.")
    threshold: float = Field(description="Decision threshold of the model.")
    model_tag: str = Field(description="Model that made the prediction.")
    explanation: Explanation | None = Field(
        default=None, description="Risk drivers; only with ?explain=true."
    )


class BatchItem(BaseModel):
    index: int = Field(description="Position of the employee in the request.")
    probability: float = Field(ge=0, le=1)
    label: Literal["Yes", "No"]
    explanation: Explanation | None = Field(default=None, description="With ?explain=true.")


class ExplainQuery(BaseModel):
    """Query parameters of the prediction routes."""

    model_config = ConfigDict(extra="forbid")
    explain: bool = False
    top_k: int = Field(default=DEFAULT_TOP_K, ge=1, le=len(FEATURES))


EXPLAIN_DOC = """

Query parameters (BentoML 1.4 cannot declare them in this document): `explain=true` adds
`explanation` to each answer: the `top_k` (default 5, at most 30) features with the largest
signed contributions to the log-odds, the base value, and `other`, the sum of the rest, with
base_value + sum(contributions) + other == logit(probability). The explanation is also stored
with the prediction in the log. Without `explain` the route takes its fast path."""


class BatchRequest(BaseModel):
    """Employees to score together; results come back in the same order."""

    model_config = ConfigDict(extra="forbid")
    employees: Annotated[
        list[EmployeeInput], Field(min_length=1, max_length=get_settings().max_batch_size)
    ]


class BatchPrediction(BaseModel):
    request_id: str
    threshold: float
    model_tag: str
    predictions: list[BatchItem]


class HistoryPage(BaseModel):
    items: list[InferencePublic]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last."
    )


class RecordedOutcome(BaseModel):
    id: uuid.UUID
    inference_id: uuid.UUID
    revision: int = Field(description="0 for the first outcome; each correction adds 1.")
    outcome: Literal["left", "stayed"]
    observed_at: datetime
    recorded_at: datetime


class RecordedOutcomes(BaseModel):
    recorded: list[RecordedOutcome]
