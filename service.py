"""The attrition risk service: a model runner with adaptive batching behind an HTTP entry service,
or, with ATTRITION_MODEL_PLACEMENT=inline, the entry service alone scoring in its own workers."""

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import bentoml
import numpy as np
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from api import internals
from api.app import create_app
from api.deps import caller
from api.fastpath import FastRoute, FastRoutes
from api.lifecycle import Drain, freeze_heap
from api.metrics import (
    disk_gauges,
    model_service_gauge,
    model_unavailable,
    monitoring_gauges,
)
from api.middleware import RequestGuard
from api.predictor import Answering, Predictor, label
from api.schemas import (
    EXPLAIN_DOC,
    BatchItem,
    BatchPrediction,
    BatchRequest,
    ExplainQuery,
    Prediction,
)
from api.scoring import InlineModel, ModelClient, ModelSet, RemoteModel
from api.tracing import bentoml_tracing, trace_id
from auth.login import PasswordGrant
from auth.middleware import JWTAuthMiddleware
from auth.oidc import ProviderError, check_provider
from auth.users import login_lockouts
from persistence.db import make_engine, upgrade
from persistence.inference_log import writer as inference_log
from persistence.inference_log.metrics import log_metrics
from persistence.inference_log.writer import InferenceLog
from persistence.model_changes import ModelChoice
from persistence.reports import latest_report
from settings import get_settings
from training.explain import Explanation
from training.schema import Employee, EmployeeInput
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
# The shadow, scored in the same batch; the one a promotion makes answer (persistence/model_changes.py).
CHALLENGER_TAG = (
    str(bentoml.models.get(settings.challenger_tag).tag) if settings.challenger_tag else None
)


# The monitoring report runs daily or so; re-reading it on every scrape would be wasted queries.
MONITORING_CACHE_SECONDS = 30


def served_models(service: Any) -> list[tuple[Any, str]]:
    """The (model ref, tag) pairs a service packs, the pinned model's first."""
    models = [(service.model_ref, MODEL_TAG)]
    if CHALLENGER_TAG is not None:
        models.append((service.challenger_ref, CHALLENGER_TAG))
    return models


@bentoml.service(name="AttritionModel", workers=1, tracing=bentoml_tracing(settings))
class AttritionModel:
    """The runner: loads the pipeline (and the challenger's) once per worker and scores
    adaptive batches with both."""

    model_ref = bentoml.models.BentoModel(MODEL_TAG)
    if CHALLENGER_TAG is not None:  # a class attribute, so `bentoml build` packs it
        challenger_ref = bentoml.models.BentoModel(CHALLENGER_TAG)

    def __init__(self) -> None:
        self.models = ModelSet.load(served_models(self), settings.runner_backend)
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
        """Probability of attrition for each row of `features`, in order: an (n,) array, or
        (n, 2) with a challenger (column 0 the pinned model, column 1 the challenger).

        `features` is `feature_matrix(employees)`: validated employees (the entry service checks
        them against the Employee contract) as an (n, len(FEATURES)) object matrix. Sending
        pydantic models cost the runner a second validation and a dump of every employee.

        Async on purpose: ONNX Runtime scores a batch in well under a millisecond, less than the
        hop to a worker thread that BentoML makes for a sync API.
        """
        return self.models.predict_proba(features)

    @bentoml.api(
        batchable=settings.runner_batching,
        max_batch_size=settings.runner_max_batch_size,
        max_latency_ms=settings.runner_max_latency_ms,
    )
    async def explain(self, features: np.ndarray) -> np.ndarray:
        """Per row of `features` (as in predict_proba): [probability, base value, the
        contribution of each of the FEATURES to the log-odds], from one run of the model; with a
        challenger, its row of the same follows (the pinned model's first)."""
        return self.models.explain(features)


api = create_app()
# While the installed BentoML and uvicorn are the versions api/internals.py was written for:
# header size and read-time limits in every worker's uvicorn, /metrics by route, the fast path.
internals.install(settings, api)
# The runner's outputs are JSON (saves BentoML building their schema per response).
internals.json_output(AttritionModel, "predict_proba", "explain")


@bentoml.service(name="AttritionService", http={"port": 3000}, tracing=bentoml_tracing(settings))
@bentoml.asgi_app(api, path="/")
class AttritionService:
    """Entry service: validates input, scores (through the runner, or inline), records, returns
    typed answers."""

    if settings.model_placement == "service":  # else no model service is started at all
        model = bentoml.depends(AttritionModel, url=settings.model_url)
    model_ref = bentoml.models.BentoModel(MODEL_TAG)
    if CHALLENGER_TAG is not None:
        challenger_ref = bentoml.models.BentoModel(CHALLENGER_TAG)

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
        self.choice = ModelChoice(
            engine=self.engine,
            served=MODEL_TAG,
            challenger=CHALLENGER_TAG,
            challenger_configured=settings.challenger_tag,
            every=settings.model_choice_seconds,
        ).start()
        challenger = None
        if CHALLENGER_TAG is not None:  # labelled at its own threshold, from its metadata
            meta = self.challenger_ref.info.metadata
            challenger = Answering(CHALLENGER_TAG, float(meta["threshold"]))
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
        self.scoring: ModelClient
        if settings.model_placement == "inline":  # this worker's own copy of the models
            models = ModelSet.load(served_models(self), settings.runner_backend)
            self.scoring = InlineModel(models, threads=settings.entry_batch_lanes)
        else:
            self.scoring = RemoteModel(lambda: self.model, settings.model_retry_seconds)
        self.predictor = Predictor(
            model=self.scoring,
            settings=settings,
            model_tag=MODEL_TAG,
            threshold=self.threshold,
            log=self.log,
            auth=self.auth,
            service_name="AttritionService",
            challenger=challenger,
            choice=self.choice,
        )
        # Found by the fast path (api/fastpath.py) in BentoML's request metrics middleware.
        self.fast_routes = self._fast_routes()
        self.drain = Drain(
            "AttritionService",
            delay=settings.shutdown_delay_seconds,
            wait_for_callers=False,
            timeout=settings.drain_timeout_seconds,
        ).install()
        freeze_heap()

    def __is_ready__(self) -> bool:
        return not self.drain.draining

    def _fast_routes(self) -> FastRoutes | None:
        """The fast path's routes (api/fastpath.py), found by it in BentoML's request metrics
        middleware; None (the full stack serves everything) while the internals gate is off or
        a BentoML option the fast path would skip is on."""
        name = AttritionService.name  # type: ignore[attr-defined]
        if not internals.gate().active:
            return None
        bypassed = internals.bypassed_options(name)
        if bypassed:
            logger.warning("the fast path is off: it would skip BentoML's %s", ", ".join(bypassed))
            return None
        p = self.predictor
        return FastRoutes(
            {"/predict/attrition": FastRoute(p.fast_predict, p.fast_authorize)},
            max_body_bytes=settings.max_body_bytes,
            timeout=internals.traffic_timeout(name),
        )

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
        self.scoring.close()
        self.choice.close()
        self.engine.dispose()

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
    ) -> tuple[str, list[float], list[Explanation] | None, Answering]:
        """Predictor.scored_and_recorded for a BentoML route; the request id goes in a header."""
        # request.url would parse and rebuild the URL; the scope has the path.
        route = ctx.request.scope["path"]
        answer = await self.predictor.scored_and_recorded(
            employees,
            caller(ctx.request),
            route,
            batch=batch,
            top_k=top_k,
            trace_id=trace_id(ctx.request.headers.get("traceparent")),
        )
        ctx.response.headers["X-Request-ID"] = answer[0]
        return answer

    @bentoml.api(route="/predict/attrition")
    async def predict(self, employee: EmployeeInput, /, ctx: bentoml.Context) -> Prediction:
        """Attrition risk of one employee."""
        request_id, [p], explained, model = await self._infer(
            [employee], ctx, batch=False, top_k=self.top_k(ctx)
        )
        return self.predictor.prediction(request_id, p, explained[0] if explained else None, model)

    @bentoml.api(route="/predict/attrition/batch")
    async def predict_batch(self, batch: BatchRequest, /, ctx: bentoml.Context) -> BatchPrediction:
        """Attrition risk of up to ATTRITION_MAX_BATCH_SIZE employees, in request order."""
        request_id, probs, explained, model = await self._infer(
            batch.employees, ctx, batch=True, top_k=self.top_k(ctx)
        )
        return BatchPrediction(
            request_id=request_id,
            threshold=model.threshold,
            model_tag=model.tag,
            predictions=[
                BatchItem(
                    index=i,
                    probability=p,
                    label=label(p, model.threshold),
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
        request_id, probs, explained, model = await self._infer(
            employees, ctx, batch=True, top_k=request.top_k
        )
        assert explained is not None
        base_p = probs[0]
        return WhatIfResponse(
            request_id=request_id,
            threshold=model.threshold,
            model_tag=model.tag,
            baseline=Answer(
                probability=base_p, label=label(base_p, model.threshold), explanation=explained[0]
            ),
            scenarios=[
                ScenarioResult(
                    index=i,
                    name=scenario.name,
                    changes=scenario.changes,
                    probability=p,
                    label=label(p, model.threshold),
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
