"""The Predictor: the one pipeline of both HTTP paths (the fast path and BentoML's routes):
score (through the entry's coalescers and the model, wherever it runs: api/scoring.py), record
(the inference log, before any answer), answer."""

import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, cast

import numpy as np
from bentoml.exceptions import ServiceUnavailable
from pydantic import TypeAdapter, ValidationError

from api import internals, tracing
from api.batching import Coalescer
from api.fastpath import DECLINE, FastResponse
from api.schemas import Prediction
from api.scoring import ModelClient
from auth.middleware import JWTAuthMiddleware, Principal, Refusal
from persistence.inference_log.writer import InferenceLog, LogUnavailable, Record
from persistence.model_changes import ModelChoice
from settings import Settings
from training.explain import Explanation, top_drivers
from training.schema import FEATURES, Employee, EmployeeInput, feature_matrix

log = logging.getLogger("attrition.service")

# The recorded inputs are the Employee contract's fields only (employee_ref has its own column).
# Serializing with the contract's own schema was faster than model_dump_json(exclude=...).
inputs_json = TypeAdapter(Employee).dump_json


# One model's block of an explain answer: probability, base value, a contribution per feature.
EXPLAIN_BLOCK = 2 + len(FEATURES)


def label(probability: float, threshold: float) -> Literal["Yes", "No"]:
    return "Yes" if probability >= threshold else "No"


class Answering(NamedTuple):
    """A loaded model as the entry answers with it."""

    tag: str
    threshold: float


def shadow_fields(shadow: Answering | None, p: float | None) -> tuple[Any, ...]:
    """challenger_tag, challenger_probability and challenger_label of a record."""
    if shadow is None or p is None:
        return (None, None, None)
    return (shadow.tag, float(p), label(float(p), shadow.threshold))


class Predictor:
    """Scores, records and answers predictions for one entry worker; owns the coalescers, the
    model client and the inference log."""

    def __init__(
        self,
        *,
        model: ModelClient,
        settings: Settings,
        model_tag: str,
        threshold: float,
        log: InferenceLog | None,
        auth: JWTAuthMiddleware,
        service_name: str,
        challenger: Answering | None = None,
        choice: ModelChoice | None = None,
    ) -> None:
        self.model = model  # the model service's client, or this worker's own (api/scoring.py)
        self.settings = settings
        self.model_tag = model_tag  # the pinned model
        self.threshold = threshold
        # Column order of the model service's answers: the pinned model, then the challenger.
        self.models = [Answering(model_tag, threshold), *([challenger] if challenger else [])]
        self.choice = choice  # which of them answers (persistence/model_changes.py)
        self.log = log
        self.auth = auth
        self.server_header = internals.server_header(service_name)
        tracer = tracing.tracer(settings)
        self.coalescer = Coalescer(
            self._score,
            max_items=settings.runner_max_batch_size,
            lanes=settings.entry_batch_lanes,
            tracer=tracer,
        )
        self.explain_coalescer = Coalescer(
            self._explain_rows,
            max_items=settings.runner_max_batch_size,
            lanes=settings.entry_batch_lanes,
            tracer=tracer,
        )
        if log is not None:
            log.tracer = tracer

    def answering(self) -> int:
        """The column of the model that answers now: 1 once the challenger is promoted."""
        if len(self.models) == 2 and self.choice is not None:
            return 1 if self.choice.current == self.models[1].tag else 0
        return 0

    def scored_by(self, rows: Sequence[Any], column: int) -> tuple[int, int]:
        """How many of this entry's models scored every row (one answer per model), and the
        column that answers: `column`, or the pinned model's while the model pods that answered
        lack the challenger. They differ only while a rollout that adds or drops the challenger
        has old and new pods side by side; a column this entry does not know is left unread."""
        scored = min([len(self.models), *(len(row) for row in rows)])
        return scored, column if column < scored else 0

    async def _score(self, employees: list[Employee]) -> list[np.ndarray]:
        probs = await self.model.predict_proba(feature_matrix(employees))
        return list(probs.reshape(len(employees), -1))

    async def _explain_rows(self, employees: list[Employee]) -> list[np.ndarray]:
        return list(await self.model.explain(feature_matrix(employees)))

    async def explain(
        self, employees: list[Employee], top_k: int, column: int
    ) -> tuple[list[np.ndarray], list[Explanation]]:
        """Each model's probability and the explanations of model `column` (0 the pinned one,
        1 the challenger); equal employees are scored once, so they (e.g. an empty what-if
        scenario and its baseline) get exactly the same answer."""
        unique = list(dict.fromkeys(employees))
        rows: list[Any]  # explain_matrix rows (the coalescer slices without looking)
        if self.settings.runner_batching:
            rows = await self.explain_coalescer.score(unique)
        else:
            rows = await self._explain_rows(unique)
        by_employee: dict[Employee, Any] = dict(zip(unique, rows, strict=True))
        # One block of explain_matrix per model the model pod has, the pinned model's first.
        blocks = [by_employee[e].reshape(-1, EXPLAIN_BLOCK) for e in employees]
        _, column = self.scored_by(blocks, column)
        explanations = [
            top_drivers(block[column], tuple(e.model_dump().values()), top_k)
            for e, block in zip(employees, blocks, strict=True)
        ]
        return [block[:, 0] for block in blocks], explanations

    async def fast_authorize(self, scope: dict[str, Any]) -> Any:
        """The fast path's caller from the request's headers, or DECLINE for the full stack to
        refuse (its body unread)."""
        if not self.auth.enabled:
            return None
        principal = await self.auth.check(scope)
        return DECLINE if isinstance(principal, Refusal) else principal

    async def fast_predict(
        self, scope: dict[str, Any], body: bytes, principal: Principal | None
    ) -> FastResponse | None:
        """POST /predict/attrition without a query string from an authorized caller, on the fast
        path (api/fastpath.py): None (the full stack answers) for anything but valid input."""
        try:
            employee = EmployeeInput.model_validate_json(body)
        except ValidationError:
            return None
        try:
            request_id, [p], _, model = await self.scored_and_recorded(
                [employee],
                principal,
                scope["path"],
                batch=False,
                trace_id=tracing.trace_id(tracing.header(scope, b"traceparent")),
            )
        except ServiceUnavailable:  # as BentoML answers it on the full stack
            return FastResponse(503, internals.UNEXPECTED, self.server_header)
        answer = self.prediction(request_id, p, None, model)
        headers = [(b"x-request-id", request_id.encode()), *self.server_header]
        return FastResponse(200, answer.model_dump_json().encode(), headers)

    async def scored_and_recorded(
        self,
        employees: Sequence[Employee],
        principal: Principal | None,
        route: str,
        *,
        batch: bool,
        top_k: int | None = None,
        trace_id: str | None = None,
    ) -> tuple[str, list[float], list[Explanation] | None, Answering]:
        """The one path every prediction takes: score with both models (and explain, when
        asked), then put one record per row in the log (on this machine's storage) before the
        answer can be sent. The model the latest promotion or rollback chose answers; the other
        one's score is recorded as the shadow, never returned."""
        started = time.perf_counter()
        request_id = uuid.uuid4()
        column = self.answering()  # once per request: all its rows answer with the same model
        explanations = None
        scores: list[Any]
        if top_k is not None:
            scores, explanations = await self.explain(list(employees), top_k, column)
        elif self.settings.runner_batching:
            scores = await self.coalescer.score(cast(list[Any], employees))
        else:
            scores = await self._score(list(employees))
        scored, column = self.scored_by(scores, column)
        model = self.models[column]
        probs = [float(row[column]) for row in scores]
        latency_ms = (time.perf_counter() - started) * 1000
        if self.log is not None:
            created_at = datetime.now(UTC).isoformat()
            subject = principal.subject if principal else "anonymous"
            threshold = model.threshold
            shadow = self.models[1 - column] if scored == 2 else None
            if batch:  # one record per row, each with an id of its own
                ids = [str(uuid.uuid5(request_id, str(i))) for i in range(len(employees))]
            else:
                ids = [str(request_id)]
            batch_id = str(request_id) if batch else None
            drivers = [e.model_dump_json() for e in explanations] if explanations else None
            records = [
                Record(record_id, created_at, subject, route, model.tag, batch_id,
                       i if batch else None, inputs_json(employee).decode(), p,
                       label(p, threshold), threshold, latency_ms,
                       getattr(employee, "employee_ref", None), drivers[i] if drivers else None,
                       trace_id, *shadow_fields(shadow, row[1 - column] if shadow else None))
                for i, (record_id, employee, p, row)
                in enumerate(zip(ids, employees, probs, scores, strict=True))
            ]  # fmt: skip
            try:
                await self.log.record(records)
            except LogUnavailable as exc:  # no record, no answer
                log.error("prediction %s not answered: %s", request_id, exc)
                raise ServiceUnavailable("the prediction could not be recorded; retry") from exc
        return str(request_id), probs, explanations, model

    def prediction(
        self, request_id: str, p: float, explanation: Explanation | None, model: Answering
    ) -> Prediction:
        """The answer of the single route, on either path."""
        return Prediction(
            request_id=request_id,
            probability=p,
            label=label(p, model.threshold),
            threshold=model.threshold,
            model_tag=model.tag,
            explanation=explanation,
        )
