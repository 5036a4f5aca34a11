"""The Predictor: the one pipeline of both HTTP paths (the fast path and BentoML's routes):
score (through the entry's coalescers and the model service), record (the inference log,
before any answer), answer."""

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, cast

import numpy as np
from bentoml.exceptions import ServiceUnavailable
from pydantic import TypeAdapter, ValidationError

from api import internals, tracing
from api.batching import Coalescer
from api.fastpath import DECLINE, FastResponse
from api.lifecycle import call_with_retry
from api.schemas import Prediction
from auth.middleware import JWTAuthMiddleware, Principal, Refusal
from persistence.inference_log.writer import InferenceLog, LogUnavailable, Record
from settings import Settings
from training.explain import Explanation, top_drivers
from training.schema import Employee, EmployeeInput, feature_matrix

log = logging.getLogger("attrition.service")

# The recorded inputs are the Employee contract's fields only (employee_ref has its own column).
# Serializing with the contract's own schema was faster than model_dump_json(exclude=...).
inputs_json = TypeAdapter(Employee).dump_json


def label(probability: float, threshold: float) -> Literal["Yes", "No"]:
    return "Yes" if probability >= threshold else "No"


class Predictor:
    """Scores, records and answers predictions for one entry worker; owns the coalescers, the
    model client and the inference log."""

    def __init__(
        self,
        *,
        model: Callable[[], Any],
        settings: Settings,
        model_tag: str,
        threshold: float,
        log: InferenceLog | None,
        auth: JWTAuthMiddleware,
        service_name: str,
    ) -> None:
        self.model = model  # the model service's client (BentoML resolves it on first use)
        self.settings = settings
        self.model_tag = model_tag
        self.threshold = threshold
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

    async def _score(self, employees: list[Employee]) -> list[float]:
        """Call the model service; retried while its connection fails (a keep-alive connection
        closed under the request, or a model service restarting), up to model_retry_seconds.
        Scoring is pure, so a retry is safe."""
        features = feature_matrix(employees)
        result = await call_with_retry(
            lambda: self.model().to_async.predict_proba(features),
            budget_seconds=self.settings.model_retry_seconds,
        )
        return [float(p) for p in result]

    async def _explain_rows(self, employees: list[Employee]) -> list[np.ndarray]:
        features = feature_matrix(employees)
        result = await call_with_retry(
            lambda: self.model().to_async.explain(features),
            budget_seconds=self.settings.model_retry_seconds,
        )
        return list(result)

    async def explain(
        self, employees: list[Employee], top_k: int
    ) -> tuple[list[float], list[Explanation]]:
        """Probabilities and explanations; equal employees are scored once, so they (e.g. an
        empty what-if scenario and its baseline) get exactly the same answer."""
        unique = list(dict.fromkeys(employees))
        rows: list[Any]  # explain_matrix rows (the coalescer slices without looking)
        if self.settings.runner_batching:
            rows = await self.explain_coalescer.score(unique)
        else:
            rows = await self._explain_rows(unique)
        by_employee: dict[Employee, Any] = dict(zip(unique, rows, strict=True))
        matrix = [by_employee[e] for e in employees]
        explanations = [
            top_drivers(row, tuple(e.model_dump().values()), top_k)
            for e, row in zip(employees, matrix, strict=True)
        ]
        return [float(row[0]) for row in matrix], explanations

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
            request_id, [p], _ = await self.scored_and_recorded(
                [employee],
                principal,
                scope["path"],
                batch=False,
                trace_id=tracing.trace_id(tracing.header(scope, b"traceparent")),
            )
        except ServiceUnavailable:  # as BentoML answers it on the full stack
            return FastResponse(503, internals.UNEXPECTED, self.server_header)
        answer = self.prediction(request_id, p, None)
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
    ) -> tuple[str, list[float], list[Explanation] | None]:
        """The one path every prediction takes: score (and explain, when asked), then put one
        record per row in the log (on this machine's storage) before the answer can be sent."""
        started = time.perf_counter()
        request_id = uuid.uuid4()
        explanations = None
        if top_k is not None:
            probs, explanations = await self.explain(list(employees), top_k)
        elif self.settings.runner_batching:
            probs = await self.coalescer.score(cast(list[Any], employees))
        else:
            probs = await self._score(list(employees))
        latency_ms = (time.perf_counter() - started) * 1000
        if self.log is not None:
            created_at = datetime.now(UTC).isoformat()
            subject = principal.subject if principal else "anonymous"
            threshold = self.threshold
            if batch:  # one record per row, each with an id of its own
                ids = [str(uuid.uuid5(request_id, str(i))) for i in range(len(employees))]
            else:
                ids = [str(request_id)]
            batch_id = str(request_id) if batch else None
            drivers = [e.model_dump_json() for e in explanations] if explanations else None
            records = [
                Record(record_id, created_at, subject, route, self.model_tag, batch_id,
                       i if batch else None, inputs_json(employee).decode(), p,
                       label(p, threshold), threshold, latency_ms,
                       getattr(employee, "employee_ref", None), drivers[i] if drivers else None,
                       trace_id)
                for i, (record_id, employee, p) in enumerate(zip(ids, employees, probs, strict=True))
            ]  # fmt: skip
            try:
                await self.log.record(records)
            except LogUnavailable as exc:  # no record, no answer
                log.error("prediction %s not answered: %s", request_id, exc)
                raise ServiceUnavailable("the prediction could not be recorded; retry") from exc
        return str(request_id), probs, explanations

    def prediction(self, request_id: str, p: float, explanation: Explanation | None) -> Prediction:
        """The answer of the single route, on either path."""
        return Prediction(
            request_id=request_id,
            probability=p,
            label=label(p, self.threshold),
            threshold=self.threshold,
            model_tag=self.model_tag,
            explanation=explanation,
        )
