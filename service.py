"""The attrition risk service: a model runner with adaptive batching behind an HTTP entry service."""

import asyncio
import gc
import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, cast

import aiohttp
import anyio
import bentoml
import numpy as np
import pandas as pd
from bentoml.exceptions import ServiceUnavailable
from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from auth.middleware import JWTAuthMiddleware, error_body, send_json
from auth.tokens import create_token
from auth.users import LockedOut, authenticate
from persistence import inference_log
from persistence.db import make_engine, upgrade
from persistence.history import BadCursor, get_inference, list_inferences
from persistence.inference_log import InferenceLog, LogUnavailable, Record
from persistence.metrics import log_metrics, rejected_counter, runner_batch_histogram
from persistence.models import InferencePublic
from settings import get_settings
from training.onnx_export import feeds_from_matrix
from training.onnx_export import session as onnx_session
from training.schema import FEATURES, Employee, feature_matrix

settings = get_settings()
logger = logging.getLogger("attrition.service")
# Resolve "name:latest" once, so the runner and the entry service serve the same version.
MODEL_TAG = str(bentoml.models.get(settings.model_tag).tag)


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


class EmployeeInput(Employee):
    """An employee to score: the model's features, and optionally your reference for them."""

    employee_ref: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        description="Your reference for this employee (an HR system id, not a name): stored with "
        "the prediction so its records can be found and erased; never sent to the model.",
        examples=["E-000123"],
    )


# The recorded inputs are the Employee contract's fields only (employee_ref has its own column).
# Serializing with the contract's own schema was faster than model_dump_json(exclude=...).
inputs_json = TypeAdapter(Employee).dump_json


class BatchItem(BaseModel):
    index: int = Field(description="Position of the employee in the request.")
    probability: float = Field(ge=0, le=1)
    label: Literal["Yes", "No"]


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
        self.batch_sizes = runner_batch_histogram()
        freeze_heap()

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


REJECTION_REASONS = {
    400: "invalid_input",
    401: "unauthenticated",
    403: "forbidden",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
}


def count_rejections(send: Any) -> Any:
    """Wrap `send` to count refused prediction requests by reason (they are not inferences)."""

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            reason = REJECTION_REASONS.get(message["status"], f"http_{message['status']}")
            rejected_counter().labels(reason=reason).inc()
        await send(message)

    return wrapped


class RequestGuard:
    """Pure ASGI middleware: 415 for non-JSON prediction bodies, 413 for bodies over max_bytes."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith("/predict"):
            send = count_rejections(send)
        headers = dict(scope["headers"])
        ctype = headers.get(b"content-type", b"application/json").split(b";")[0].strip()
        if scope["path"].startswith("/predict") and ctype != b"application/json":
            msg = f"content type {ctype.decode(errors='replace')!r} is not supported; send application/json"
            await send_json(
                send, 415, error_body("unsupported media type", ["header"], msg, "media_type")
            )
            return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit():
            if int(length) > self.max_bytes:
                await self._refuse(send, int(length))
            else:
                await self.app(scope, receive, send)
            return
        # No (valid) Content-Length: read the stream, counting, then replay it.
        messages, total = [], 0
        while True:
            message = await receive()
            messages.append(message)
            total += len(message.get("body", b""))
            if total > self.max_bytes:
                await self._refuse(send, total)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Any:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any, size: int) -> None:
        msg = f"body of {size} bytes exceeds the limit of {self.max_bytes} bytes"
        await send_json(send, 413, error_body("request body too large", ["body"], msg, "too_large"))


# BentoML works out a root-typed output's media type by building its JSON schema on every
# response (10% of the runner's CPU under load); naming it skips that.
AttritionModel.apis["predict_proba"].output_spec.media_type = "application/json"  # type: ignore[attr-defined]

api = FastAPI(title="Attrition service: status and auth", docs_url=None, redoc_url=None)


def label(probability: float, threshold: float) -> Literal["Yes", "No"]:
    return "Yes" if probability >= threshold else "No"


def caller(request: Request) -> Any:
    """The authenticated principal (None when auth is off in development mode)."""
    return getattr(request.state, "principal", None)


@bentoml.service(name="AttritionService", http={"port": 3000})
@bentoml.asgi_app(api, path="/")
class AttritionService:
    """Entry service: validates input, calls the runner, returns typed answers."""

    model = bentoml.depends(AttritionModel)
    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.metadata: dict[str, Any] = dict(self.model_ref.info.metadata)
        self.threshold = float(self.metadata["threshold"])
        # Secured here, not at import, so `bentoml build` needs no secret.
        self.settings = settings.secured()
        self.engine = make_engine(settings.sqlalchemy_url)  # one per worker process
        self.coalescer = Coalescer(
            self._score, max_items=settings.runner_max_batch_size, lanes=settings.entry_batch_lanes
        )
        self.log: InferenceLog | None = None
        if settings.log_enabled:
            self.log = inference_log.from_settings(settings, log_metrics())
        freeze_heap()

    @bentoml.on_deployment
    def migrate() -> None:
        """Check the auth settings and apply pending migrations, once, before workers start."""
        settings.secured()
        upgrade(settings.sqlalchemy_url)

    @bentoml.on_shutdown
    def close(self) -> None:
        if self.log is not None:
            self.log.close()  # write what waits; what cannot be written is replayed at start
        self.engine.dispose()

    async def _score(self, employees: list[Employee]) -> list[float]:
        """Call the runner, retrying once when its connection was closed under the request.

        BentoML 1.4.40's runner (uvicorn) closes idle keep-alive connections after 5 s while the
        entry service's client keeps them for 15 s, so a request can be written to a connection
        just as it closes (broken pipe / server disconnected). Scoring is pure: a retry is safe.
        """
        features = feature_matrix(employees)
        try:
            result = await self.model.to_async.predict_proba(features)
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
            logger.info("runner connection closed under the request (%s); retrying once", exc)
            result = await self.model.to_async.predict_proba(features)
        return [float(p) for p in result]

    async def _infer(
        self, employees: Sequence[Employee], ctx: bentoml.Context, *, batch: bool
    ) -> tuple[str, list[float]]:
        """The one path every prediction takes: score, then put one record per row in the log
        (on this machine's storage) before the answer can be sent."""
        started = time.perf_counter()
        request_id = uuid.uuid4()
        if settings.runner_batching:
            probs = await self.coalescer.score(cast(list[Any], employees))
        else:
            probs = await self._score(list(employees))
        latency_ms = (time.perf_counter() - started) * 1000
        if self.log is not None:
            principal = caller(ctx.request)
            created_at = datetime.now(UTC).isoformat()
            subject = principal.subject if principal else "anonymous"
            route = ctx.request.scope["path"]  # request.url would parse and rebuild the URL
            threshold = self.threshold
            if batch:  # one record per row, each with an id of its own
                ids = [str(uuid.uuid5(request_id, str(i))) for i in range(len(employees))]
            else:
                ids = [str(request_id)]
            batch_id = str(request_id) if batch else None
            records = [
                Record(record_id, created_at, subject, route, MODEL_TAG, batch_id,
                       i if batch else None, inputs_json(employee).decode(), p,
                       label(p, threshold), threshold, latency_ms,
                       getattr(employee, "employee_ref", None))
                for i, (record_id, employee, p) in enumerate(zip(ids, employees, probs, strict=True))
            ]  # fmt: skip
            try:
                await self.log.record(records)
            except LogUnavailable as exc:  # no record, no answer
                logger.error("prediction %s not answered: %s", request_id, exc)
                raise ServiceUnavailable("the prediction could not be recorded; retry") from exc
        ctx.response.headers["X-Request-ID"] = str(request_id)
        return str(request_id), probs

    @bentoml.api(route="/predict/attrition")
    async def predict(self, employee: EmployeeInput, /, ctx: bentoml.Context) -> Prediction:
        """Attrition risk of one employee."""
        request_id, [p] = await self._infer([employee], ctx, batch=False)
        return Prediction(
            request_id=request_id,
            probability=p,
            label=label(p, self.threshold),
            threshold=self.threshold,
            model_tag=MODEL_TAG,
        )

    @bentoml.api(route="/predict/attrition/batch")
    async def predict_batch(self, batch: BatchRequest, /, ctx: bentoml.Context) -> BatchPrediction:
        """Attrition risk of up to ATTRITION_MAX_BATCH_SIZE employees, in request order."""
        request_id, probs = await self._infer(batch.employees, ctx, batch=True)
        return BatchPrediction(
            request_id=request_id,
            threshold=self.threshold,
            model_tag=MODEL_TAG,
            predictions=[
                BatchItem(index=i, probability=p, label=label(p, self.threshold))
                for i, p in enumerate(probs)
            ],
        )


# The decorators turned the classes into bentoml Service objects, which mypy cannot see.
AttritionService.add_asgi_middleware(RequestGuard, max_bytes=settings.max_body_bytes)  # type: ignore[attr-defined]
AttritionService.add_asgi_middleware(JWTAuthMiddleware, settings=settings)  # type: ignore[attr-defined]


@api.get("/health")
async def health(svc: AttritionService = Depends(bentoml.get_current_service)) -> dict[str, Any]:
    """Liveness with the served model, uptime and the inference log's state."""
    logging_state = (
        await anyio.to_thread.run_sync(svc.log.state) if svc.log is not None else {"state": "off"}
    )
    return {
        "status": "ok" if logging_state["state"] in ("ok", "off") else "degraded",
        "model_tag": MODEL_TAG,
        "uptime_seconds": round(time.monotonic() - svc.started, 1),
        "inference_log": logging_state,
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
        "trained_at": meta.get("trained_at"),
        "versions": meta.get("versions"),
        "feature_schema": Employee.model_json_schema(),
    }


class Token(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the token expires.")


@api.post("/auth/token", response_model=Token, responses={400: {}, 429: {}})
def issue_token(
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
    grant_type: Annotated[Literal["password"], Form()] = "password",
    svc: AttritionService = Depends(bentoml.get_current_service),
) -> Any:
    """OAuth2 password grant. Unknown user and wrong password get the same answer."""
    with Session(svc.engine) as session:
        try:
            user = authenticate(
                session=session,
                username=username,
                password=password,
                max_failures=settings.login_max_failures,
                lockout_seconds=settings.login_lockout_seconds,
            )
        except LockedOut as locked:
            return JSONResponse(
                {
                    "error": "temporarily_locked",
                    "error_description": "too many failed logins; try later",
                },
                status_code=429,
                headers={"Retry-After": str(locked.retry_after_seconds)},
            )
        if user is None:
            return JSONResponse(
                {"error": "invalid_grant", "error_description": "invalid username or password"},
                status_code=400,
            )
        token = create_token(svc.settings, subject=user.username, roles=user.roles)
    return Token(access_token=token, expires_in=settings.access_token_ttl_seconds)


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
        datetime | None, Query(description="Inclusive lower bound (ISO 8601).")
    ] = None,
    until: Annotated[
        datetime | None, Query(description="Exclusive upper bound (ISO 8601).")
    ] = None,
    label: Annotated[Literal["Yes", "No"] | None, Query()] = None,
    min_probability: Annotated[float | None, Query(ge=0, le=1)] = None,
    model_tag: Annotated[str | None, Query(max_length=128)] = None,
    subject: Annotated[str | None, Query(max_length=255, description="Admins only.")] = None,
    svc: AttritionService = Depends(bentoml.get_current_service),
) -> Any:
    """Recorded predictions, newest first; `history` users see only their own."""
    who = caller(request)
    if who is not None and not who.is_admin:
        if subject is not None and subject != who.subject:
            raise HTTPException(403, "only admins may read another subject's history")
        subject = who.subject
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise HTTPException(400, f"{name} needs a timezone offset, e.g. 2026-01-31T00:00:00Z")
    with Session(svc.engine) as session:
        try:
            items, next_cursor = list_inferences(
                session=session, limit=limit, cursor=cursor, subject=subject, since=since,
                until=until, label=label, min_probability=min_probability, model_tag=model_tag,
            )  # fmt: skip
        except BadCursor as exc:
            raise HTTPException(400, f"cursor: {exc}") from exc
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


@api.exception_handler(OperationalError)
async def database_unavailable(_: Request, exc: OperationalError) -> JSONResponse:
    return JSONResponse({"detail": "database unavailable; try again shortly"}, status_code=503)
