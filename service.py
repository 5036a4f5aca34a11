"""The attrition risk service: a model runner with adaptive batching behind an HTTP entry service."""

import asyncio
import gc
import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, cast
from urllib.parse import parse_qsl

import bentoml
import numpy as np
import pandas as pd
from bentoml.exceptions import ServiceUnavailable
from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session

from api import internals
from api.fastpath import DECLINE, FastResponse, FastRoute, FastRoutes
from api.lifecycle import Drain, call_with_retry
from api.middleware import RequestGuard, invalid_request
from auth.login import PasswordGrant, Token
from auth.middleware import JWTAuthMiddleware, Principal, Refusal
from auth.oidc import ProviderError, check_provider
from persistence import inference_log
from persistence.db import make_engine, upgrade
from persistence.history import BadCursor, FilterText, FilterTime, get_inference, list_inferences
from persistence.inference_log import InferenceLog, LogUnavailable, Record
from persistence.metrics import (
    disk_gauges,
    log_metrics,
    login_lockouts,
    model_service_gauge,
    model_unavailable,
    monitoring_gauges,
    runner_batch_histogram,
)
from persistence.models import USERNAME_MAX_LENGTH, USERNAME_PATTERN, InferencePublic
from persistence.outcomes import OutcomesIn, OutcomesRefused, record_outcomes
from persistence.reports import latest_report
from settings import get_settings
from training.explain import (
    DEFAULT_TOP_K,
    Explanation,
    explain_features,
    explain_session,
    top_drivers,
)
from training.onnx_export import feeds_from_matrix
from training.onnx_export import session as onnx_session
from training.schema import FEATURES, Employee, EmployeeInput, feature_matrix
from training.whatif import (
    Answer,
    ScenarioResult,
    WhatIfRequest,
    WhatIfResponse,
    relocate,
    scenario_employees,
)

settings = get_settings()
logger = logging.getLogger("attrition.service")
# Resolve "name:latest" once, so the runner and the entry service serve the same version.
MODEL_TAG = str(bentoml.models.get(settings.model_tag).tag)


# The monitoring report runs daily or so; re-reading it on every scrape would be wasted queries.
MONITORING_CACHE_SECONDS = 30

# Allocations between young-generation collections (CPython's default is 700). A request
# allocates a few hundred tracked objects that die with it, so the default collected on nearly
# every request and a full collection every ~100. At 64 clients, 20,000 cut the no-op endpoint's
# CPU per request by 10 % and its p99 from ~90 to ~40 ms, and the full service's p99 from ~75 to
# ~50 ms (loadtests/bench.py).
GC_GEN0_THRESHOLD = 20_000


def freeze_heap() -> None:
    """Move everything loaded at start-up out of the garbage collector's sight, and collect
    less often.

    A worker holds ~200k long-lived objects (sklearn, pandas, pydantic schemas); every full
    collection walked them all, a 50-150 ms pause that showed up as p99 latency even at one client.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 10, 10)


class Coalescer:
    """Opportunistic batching in the entry worker: while `lanes` runner calls are in flight, new
    requests wait and then go together in one call. An idle service adds no delay; a busy one
    sends the runner a few large calls instead of many small ones, whose per-call HTTP cost
    (not the model) dominated the runner's CPU. The runner still batches adaptively across calls.
    """

    def __init__(self, call: Any, *, max_items: int, lanes: int) -> None:
        self.call = call
        self.max_items = max_items
        self.lanes = lanes
        self.busy = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.pending: deque[tuple[list[Any], asyncio.Future[list[float]]]] = deque()

    async def score(self, items: list[Any]) -> list[float]:
        if len(items) >= self.max_items:  # a large batch request goes on its own
            return list(await self.call(items))
        future: asyncio.Future[list[float]] = asyncio.get_running_loop().create_future()
        self.pending.append((items, future))
        if self.busy < self.lanes:
            self.busy += 1
            task = asyncio.create_task(self._drain())
            self.tasks.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self.tasks.discard)
        return await future

    async def _drain(self) -> None:
        try:
            while self.pending:
                group: list[tuple[list[Any], asyncio.Future[list[float]]]] = []
                size = 0
                while self.pending and (
                    not group or size + len(self.pending[0][0]) <= self.max_items
                ):
                    items, future = self.pending.popleft()
                    group.append((items, future))
                    size += len(items)
                try:
                    result = list(await self.call([x for items, _ in group for x in items]))
                except Exception as exc:  # noqa: BLE001 - every waiter gets the failure
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                start = 0
                for items, future in group:
                    if not future.done():
                        future.set_result(result[start : start + len(items)])
                    start += len(items)
        finally:
            self.busy -= 1


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


# The recorded inputs are the Employee contract's fields only (employee_ref has its own column).
# Serializing with the contract's own schema was faster than model_dump_json(exclude=...).
inputs_json = TypeAdapter(Employee).dump_json


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
        list[EmployeeInput], Field(min_length=1, max_length=settings.max_batch_size)
    ]


class BatchPrediction(BaseModel):
    request_id: str
    threshold: float
    model_tag: str
    predictions: list[BatchItem]


@bentoml.service(name="AttritionModel", workers=1)
class AttritionModel:
    """The runner: loads the pipeline once per worker and scores adaptive batches."""

    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.pipeline = bentoml.sklearn.load_model(self.model_ref)
        onnx_model = self.model_ref.custom_objects.get("onnx")
        if settings.runner_backend == "onnx" and onnx_model is None:
            raise RuntimeError(
                f"{MODEL_TAG} has no verified ONNX export; use runner_backend=sklearn"
            )
        # The export was checked against sklearn on the whole training data (training/onnx_export.py).
        self.onnx = (
            onnx_session(onnx_model)
            if onnx_model and settings.runner_backend != "sklearn"
            else None
        )
        logger.info("runner scores with %s", "ONNX Runtime" if self.onnx else "scikit-learn")
        self.explainer = self.model_ref.custom_objects.get("explainer")
        verified = self.model_ref.info.metadata.get("explanation", {}).get("onnx_verified")
        # The same graph with the preprocessed matrix as a second output (checked at training).
        self.explain_onnx = (
            explain_session(onnx_model) if self.onnx is not None and verified else None
        )
        self.batch_sizes = runner_batch_histogram()
        # Outlive the entry workers of this server, which may still have requests for us.
        self.drain = Drain(
            "AttritionModel",
            delay=settings.shutdown_delay_seconds,
            wait_for_callers=True,
            timeout=settings.drain_timeout_seconds,
        ).install()
        freeze_heap()

    def __is_ready__(self) -> bool:
        return not self.drain.draining

    @bentoml.api(
        batchable=settings.runner_batching,
        max_batch_size=settings.runner_max_batch_size,
        max_latency_ms=settings.runner_max_latency_ms,
    )
    async def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Probability of attrition for each row of `features`, in order.

        `features` is `feature_matrix(employees)`: validated employees (the entry service checks
        them against the Employee contract) as an (n, len(FEATURES)) object matrix. Sending
        pydantic models cost the runner a second validation and a dump of every employee.

        Async on purpose: ONNX Runtime scores a batch in well under a millisecond, less than the
        hop to a worker thread that BentoML makes for a sync API.
        """
        if features.ndim != 2 or features.shape[1] != len(FEATURES):
            raise ValueError(f"expected (n, {len(FEATURES)}) features, got {features.shape}")
        self.batch_sizes.observe(len(features))
        if self.onnx is not None:
            return self.onnx.run(["probabilities"], feeds_from_matrix(features))[0][:, 1]
        frame = pd.DataFrame(features, columns=list(FEATURES)).infer_objects()
        return self.pipeline.predict_proba(frame)[:, 1]

    @bentoml.api(
        batchable=settings.runner_batching,
        max_batch_size=settings.runner_max_batch_size,
        max_latency_ms=settings.runner_max_latency_ms,
    )
    async def explain(self, features: np.ndarray) -> np.ndarray:
        """Per row of `features` (as in predict_proba): [probability, base value, the
        contribution of each of the FEATURES to the log-odds], from one run of the model."""
        if self.explainer is None:
            raise ValueError(f"{MODEL_TAG} has no exact explainer")
        self.batch_sizes.observe(len(features))
        return explain_features(
            self.explainer, features, session=self.explain_onnx, pipeline=self.pipeline
        )


api = FastAPI(title="Attrition service: status and auth", docs_url=None, redoc_url=None)
api.add_exception_handler(RequestValidationError, invalid_request)
# While the installed BentoML and uvicorn are the versions api/internals.py was written for:
# header size and read-time limits in every worker's uvicorn, /metrics by route, the fast path.
internals.install(settings, api)
# The runner's outputs are JSON (saves BentoML building their schema per response).
internals.json_output(AttritionModel, "predict_proba", "explain")

SERVER_HEADER = internals.server_header("AttritionService")


def label(probability: float, threshold: float) -> Literal["Yes", "No"]:
    return "Yes" if probability >= threshold else "No"


def caller(request: Request) -> Any:
    """The authenticated principal (None when auth is off in development mode)."""
    return getattr(request.state, "principal", None)


@bentoml.service(name="AttritionService", http={"port": 3000})
@bentoml.asgi_app(api, path="/")
class AttritionService:
    """Entry service: validates input, calls the runner, returns typed answers."""

    model = bentoml.depends(AttritionModel, url=settings.model_url)
    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.metadata: dict[str, Any] = dict(self.model_ref.info.metadata)
        self.threshold = float(self.metadata["threshold"])
        # Secured here, not at import, so `bentoml build` needs no secret.
        self.settings = settings.secured()
        self.engine = make_engine(  # one per worker process
            settings.sqlalchemy_url, statement_timeout=settings.db_statement_timeout_seconds
        )
        self.password_grant = PasswordGrant(self.engine, self.settings)
        self.coalescer = Coalescer(
            self._score, max_items=settings.runner_max_batch_size, lanes=settings.entry_batch_lanes
        )
        self.explain_coalescer = Coalescer(
            self._explain_rows,
            max_items=settings.runner_max_batch_size,
            lanes=settings.entry_batch_lanes,
        )
        self.explainable = self.metadata.get("explanation", {}).get("method") is not None
        self._report: tuple[datetime, dict[str, Any]] | None = None
        self._report_read_at = -float("inf")
        # Rare events' counters shown at 0 from the start: increase() cannot see a first sample.
        login_lockouts()
        model_unavailable()
        self.log: InferenceLog | None = None
        if settings.log_enabled:
            self.log = inference_log.from_settings(settings, log_metrics())
        # The same checks as the middlewares, for the fast path.
        self.auth = JWTAuthMiddleware(None, self.settings)
        # Found by the fast path (api/fastpath.py) in BentoML's request metrics middleware.
        self.fast_routes = (
            FastRoutes(
                {"/predict/attrition": FastRoute(self._fast_predict, self._fast_authorize)},
                max_body_bytes=settings.max_body_bytes,
                timeout=internals.traffic_timeout(AttritionService.name),  # type: ignore[attr-defined]
            )
            if internals.gate().active
            else None
        )
        self.drain = Drain(
            "AttritionService",
            delay=settings.shutdown_delay_seconds,
            wait_for_callers=False,
            timeout=settings.drain_timeout_seconds,
        ).install()
        freeze_heap()

    def __is_ready__(self) -> bool:
        return not self.drain.draining

    @bentoml.on_deployment
    def migrate() -> None:
        """Check the auth settings and the identity provider, and apply pending migrations,
        once, before workers start."""
        settings.secured()
        try:
            check_provider(settings)
        except ProviderError as exc:  # one line, not a traceback: the operator's next step
            raise SystemExit(f"cannot start: {exc} (ATTRITION_OIDC_ISSUER)") from None
        if settings.migrate_on_start:
            upgrade(settings.sqlalchemy_url)

    @bentoml.on_shutdown
    def close(self) -> None:
        if self.fast_routes is not None:
            self.fast_routes.close()
        if self.log is not None:
            self.log.close()  # write what waits; what cannot be written is replayed at start
        self.password_grant.close()
        self.engine.dispose()

    async def _score(self, employees: list[Employee]) -> list[float]:
        """Call the model service; retried while its connection fails (a keep-alive connection
        closed under the request, or a model service restarting), up to model_retry_seconds.
        Scoring is pure, so a retry is safe."""
        features = feature_matrix(employees)
        result = await call_with_retry(
            lambda: self.model.to_async.predict_proba(features),
            budget_seconds=settings.model_retry_seconds,
        )
        return [float(p) for p in result]

    async def _explain_rows(self, employees: list[Employee]) -> list[np.ndarray]:
        features = feature_matrix(employees)
        result = await call_with_retry(
            lambda: self.model.to_async.explain(features),
            budget_seconds=settings.model_retry_seconds,
        )
        return list(result)

    async def _explain(
        self, employees: list[Employee], top_k: int
    ) -> tuple[list[float], list[Explanation]]:
        """Probabilities and explanations; equal employees are scored once, so they (e.g. an
        empty what-if scenario and its baseline) get exactly the same answer."""
        unique = list(dict.fromkeys(employees))
        rows: list[Any]  # explain_matrix rows (the coalescer slices without looking)
        if settings.runner_batching:
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

    def top_k(self, ctx: bentoml.Context) -> int | None:
        """The `explain` query: None for a plain prediction (the fast path), else top_k."""
        raw = ctx.request.scope.get("query_string", b"")
        if not raw:
            return None
        try:
            query = ExplainQuery.model_validate(dict(parse_qsl(raw.decode("latin-1"))))
        except ValidationError as exc:
            raise ValidationError.from_exception_data("query", relocate(exc, "query")) from None
        if query.explain and not self.explainable:
            raise ValidationError.from_exception_data("query", [{
                "type": "value_error", "loc": ("query", "explain"), "input": "true",
                "ctx": {"error": ValueError(f"{MODEL_TAG} has no exact explainer")},
            }])  # fmt: skip
        return query.top_k if query.explain else None

    async def _infer(
        self,
        employees: Sequence[Employee],
        ctx: bentoml.Context,
        *,
        batch: bool,
        top_k: int | None = None,
    ) -> tuple[str, list[float], list[Explanation] | None]:
        """_scored_and_recorded for a BentoML route; the request id goes in a header."""
        # request.url would parse and rebuild the URL; the scope has the path.
        route = ctx.request.scope["path"]
        answer = await self._scored_and_recorded(
            employees, caller(ctx.request), route, batch=batch, top_k=top_k
        )
        ctx.response.headers["X-Request-ID"] = answer[0]
        return answer

    async def _fast_authorize(self, scope: dict[str, Any]) -> Any:
        """The fast path's caller from the request's headers, or DECLINE for the full stack to
        refuse (its body unread)."""
        if not self.auth.enabled:
            return None
        principal = await self.auth.check(scope)
        return DECLINE if isinstance(principal, Refusal) else principal

    async def _fast_predict(
        self, scope: dict[str, Any], body: bytes, principal: Principal | None
    ) -> FastResponse | None:
        """POST /predict/attrition without a query string from an authorized caller, on the fast
        path (api/fastpath.py): None (the full stack answers) for anything but valid input."""
        try:
            employee = EmployeeInput.model_validate_json(body)
        except ValidationError:
            return None
        try:
            request_id, [p], _ = await self._scored_and_recorded(
                [employee], principal, scope["path"], batch=False
            )
        except ServiceUnavailable:  # as BentoML answers it on the full stack
            return FastResponse(503, internals.UNEXPECTED, SERVER_HEADER)
        answer = self._prediction(request_id, p, None)
        headers = [(b"x-request-id", request_id.encode()), *SERVER_HEADER]
        return FastResponse(200, answer.model_dump_json().encode(), headers)

    async def _scored_and_recorded(
        self,
        employees: Sequence[Employee],
        principal: Principal | None,
        route: str,
        *,
        batch: bool,
        top_k: int | None = None,
    ) -> tuple[str, list[float], list[Explanation] | None]:
        """The one path every prediction takes: score (and explain, when asked), then put one
        record per row in the log (on this machine's storage) before the answer can be sent."""
        started = time.perf_counter()
        request_id = uuid.uuid4()
        explanations = None
        if top_k is not None:
            probs, explanations = await self._explain(list(employees), top_k)
        elif settings.runner_batching:
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
                Record(record_id, created_at, subject, route, MODEL_TAG, batch_id,
                       i if batch else None, inputs_json(employee).decode(), p,
                       label(p, threshold), threshold, latency_ms,
                       getattr(employee, "employee_ref", None), drivers[i] if drivers else None)
                for i, (record_id, employee, p) in enumerate(zip(ids, employees, probs, strict=True))
            ]  # fmt: skip
            try:
                await self.log.record(records)
            except LogUnavailable as exc:  # no record, no answer
                logger.error("prediction %s not answered: %s", request_id, exc)
                raise ServiceUnavailable("the prediction could not be recorded; retry") from exc
        return str(request_id), probs, explanations

    @bentoml.api(route="/predict/attrition")
    async def predict(self, employee: EmployeeInput, /, ctx: bentoml.Context) -> Prediction:
        """Attrition risk of one employee."""
        request_id, [p], explained = await self._infer(
            [employee], ctx, batch=False, top_k=self.top_k(ctx)
        )
        return self._prediction(request_id, p, explained[0] if explained else None)

    def _prediction(self, request_id: str, p: float, explanation: Explanation | None) -> Prediction:
        """The answer of the single route, on either path."""
        return Prediction(
            request_id=request_id,
            probability=p,
            label=label(p, self.threshold),
            threshold=self.threshold,
            model_tag=MODEL_TAG,
            explanation=explanation,
        )

    @bentoml.api(route="/predict/attrition/batch")
    async def predict_batch(self, batch: BatchRequest, /, ctx: bentoml.Context) -> BatchPrediction:
        """Attrition risk of up to ATTRITION_MAX_BATCH_SIZE employees, in request order."""
        request_id, probs, explained = await self._infer(
            batch.employees, ctx, batch=True, top_k=self.top_k(ctx)
        )
        return BatchPrediction(
            request_id=request_id,
            threshold=self.threshold,
            model_tag=MODEL_TAG,
            predictions=[
                BatchItem(
                    index=i,
                    probability=p,
                    label=label(p, self.threshold),
                    explanation=explained[i] if explained else None,
                )
                for i, p in enumerate(probs)
            ],
        )

    @bentoml.api(route="/predict/attrition/what-if")
    async def what_if(self, request: WhatIfRequest, /, ctx: bentoml.Context) -> WhatIfResponse:
        """One employee and up to 50 scenarios of changed fields (each checked against the
        employee contract, consistency rules included): the probability, label, change from
        the baseline and top drivers of each. Logged like a batch: the baseline at position 0,
        scenario i at position i + 1."""
        if not self.explainable:
            raise bentoml.exceptions.InvalidArgument(f"{MODEL_TAG} has no exact explainer")
        employees = [request.employee, *scenario_employees(request)]
        request_id, probs, explained = await self._infer(
            employees, ctx, batch=True, top_k=request.top_k
        )
        assert explained is not None
        base_p = probs[0]
        return WhatIfResponse(
            request_id=request_id,
            threshold=self.threshold,
            model_tag=MODEL_TAG,
            baseline=Answer(
                probability=base_p, label=label(base_p, self.threshold), explanation=explained[0]
            ),
            scenarios=[
                ScenarioResult(
                    index=i,
                    name=scenario.name,
                    changes=scenario.changes,
                    probability=p,
                    label=label(p, self.threshold),
                    change=p - base_p,
                    explanation=e,
                )
                for i, (scenario, p, e) in enumerate(
                    zip(request.scenarios, probs[1:], explained[1:], strict=True)
                )
            ],
        )

    def __metrics__(self, content: str) -> str:
        """BentoML's metrics plus gauges from the last monitoring report (read at most every
        MONITORING_CACHE_SECONDS; the report's age is computed at each scrape), the inference
        log's disk use, and a probe of the model service when it is served apart."""
        now = time.monotonic()
        if now - self._report_read_at > MONITORING_CACHE_SECONDS:
            try:
                with Session(self.engine) as session:
                    report = latest_report(session=session)
                self._report = (report.created_at, report.summary) if report else None
            except SQLAlchemyError as exc:  # never fail the scrape of everything else
                logger.warning("cannot read the last monitoring report: %s", exc)
            self._report_read_at = now
        disk = disk_gauges(inference_log.directory(settings.data_dir)) if self.log else ""
        gauges = monitoring_gauges(self._report, datetime.now(UTC))
        model = model_service_gauge(settings.model_url)
        return content + gauges + disk + model + internals.active_gauge()


# The decorators turned the classes into bentoml Service objects, which mypy cannot see.
for _route in ("predict", "predict_batch"):  # the query parameters, in each route's description
    AttritionService.apis[_route].doc += EXPLAIN_DOC  # type: ignore[attr-defined]
AttritionService.add_asgi_middleware(RequestGuard, max_bytes=settings.max_body_bytes)  # type: ignore[attr-defined]
AttritionService.add_asgi_middleware(JWTAuthMiddleware, settings=settings)  # type: ignore[attr-defined]


# /health's file reads (the inference log's counts) on a thread of their own, never queued
# behind route handlers that wait on the database in the shared pool.
HEALTH_READS = ThreadPoolExecutor(1, "health")


@api.get("/health")
async def health(svc: AttritionService = Depends(bentoml.get_current_service)) -> dict[str, Any]:
    """Liveness with the served model, uptime, and the state of the database and of the
    inference log: `degraded` when either is not ok. Never waits on the database longer than
    ATTRITION_USER_LOOKUP_SECONDS."""
    database = await svc.auth.users.database()
    logging_state = (
        await asyncio.get_running_loop().run_in_executor(HEALTH_READS, svc.log.state)
        if svc.log is not None
        else {"state": "off"}
    )
    healthy = database == "ok" and logging_state["state"] in ("ok", "off")
    return {
        "status": "ok" if healthy else "degraded",
        "model_tag": MODEL_TAG,
        "uptime_seconds": round(time.monotonic() - svc.started, 1),
        "database": database,
        "inference_log": logging_state,
        "internals": internals.gate().as_dict(),
    }


@api.get("/model")
async def model_card(
    svc: AttritionService = Depends(bentoml.get_current_service),
) -> dict[str, Any]:
    """The served model: tag, metrics, threshold and the feature schema."""
    meta = svc.metadata
    return {
        "tag": MODEL_TAG,
        "threshold": svc.threshold,
        "model_family": meta.get("model_family"),
        "threshold_rule": meta.get("threshold_rule"),
        "metrics": {"cv": meta.get("cv"), "test": meta.get("test")},
        "data_sha256": meta.get("data_sha256"),
        "explanation": meta.get("explanation"),
        "regularisation": meta.get("regularisation"),
        "trained_at": meta.get("trained_at"),
        "versions": meta.get("versions"),
        "feature_schema": Employee.model_json_schema(),
    }


@api.post("/auth/token", response_model=Token, responses={400: {}, 429: {}, 503: {}})
async def issue_token(
    username: Annotated[
        str, Form(min_length=1, max_length=USERNAME_MAX_LENGTH, pattern=USERNAME_PATTERN)
    ],
    password: Annotated[str, Form(max_length=1024)],
    grant_type: Annotated[Literal["password"], Form()] = "password",
    svc: AttritionService = Depends(bentoml.get_current_service),
) -> Any:
    """OAuth2 password grant. Unknown user and wrong password get the same answer."""
    return await svc.password_grant(username, password)


class HistoryPage(BaseModel):
    items: list[InferencePublic]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last."
    )


@api.get("/predict/history", response_model=HistoryPage)
def history(
    request: Request,
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
    svc: AttritionService = Depends(bentoml.get_current_service),
) -> Any:
    """Recorded predictions, newest first; `history` users see only their own."""
    who = caller(request)
    if who is not None and not who.is_admin:
        if subject is not None and subject != who.subject:
            raise HTTPException(403, "only admins may read another subject's history")
        subject = who.subject
    with Session(svc.engine) as session:
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


@api.get("/predict/history/{inference_id}", response_model=InferencePublic)
def history_item(
    request: Request,
    inference_id: uuid.UUID,
    svc: AttritionService = Depends(bentoml.get_current_service),
) -> Any:
    """One recorded prediction; someone else's is 404 for non-admins."""
    who = caller(request)
    with Session(svc.engine) as session:
        item = get_inference(session=session, inference_id=inference_id)
    if item is None or (who is not None and not who.is_admin and item.subject != who.subject):
        raise HTTPException(404, "no such inference")
    return InferencePublic.model_validate(item)


class RecordedOutcome(BaseModel):
    id: uuid.UUID
    inference_id: uuid.UUID
    revision: int = Field(description="0 for the first outcome; each correction adds 1.")
    outcome: Literal["left", "stayed"]
    observed_at: datetime
    recorded_at: datetime


class RecordedOutcomes(BaseModel):
    recorded: list[RecordedOutcome]


@api.post(
    "/outcomes",
    status_code=201,
    response_model=RecordedOutcomes,
    responses={400: {}, 404: {}, 409: {}},
)
def post_outcomes(
    request: Request,
    body: OutcomesIn,
    svc: AttritionService = Depends(bentoml.get_current_service),
) -> Any:
    """What became of scored employees (role `outcomes`): all recorded, or none.

    404 for an id that is unknown or another caller's (admins may use any), 409 for an outcome
    already recorded (send `correction: true` to replace it; the history is kept), 400 for an
    invalid body, an observation in the future or before the prediction.
    """
    who = caller(request)
    with Session(svc.engine) as session:
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


@api.get("/monitoring/latest")
def monitoring_latest(svc: AttritionService = Depends(bentoml.get_current_service)) -> Any:
    """The summary of the last monitoring report (admin); 404 before the first report."""
    with Session(svc.engine) as session:
        report = latest_report(session=session)
    if report is None:
        raise HTTPException(404, "no monitoring report yet; run python -m monitoring report")
    return {
        "id": str(report.id),
        "created_at": report.created_at.isoformat(),
        "model_tag": report.model_tag,
        "summary": report.summary,
    }


@api.get("/model/card", response_class=HTMLResponse)
def model_card_html(svc: AttritionService = Depends(bentoml.get_current_service)) -> Any:
    """The served model's card (HTML with plots), written when the model was trained."""
    card = svc.model_ref.custom_objects.get("model_card")
    if card is None:
        raise HTTPException(404, f"{MODEL_TAG} was trained without a model card")
    return HTMLResponse(card, headers={"X-Model-Tag": MODEL_TAG})


@api.exception_handler(OperationalError)
@api.exception_handler(PoolTimeout)  # every connection busy (or stuck on a silent database)
async def database_unavailable(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": "database unavailable; try again shortly"}, status_code=503)
