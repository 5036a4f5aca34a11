"""The framework's ceiling for the benchmark: the same BentoML setup, middlewares and input
validation as the real entry service, but no model call and no inference log."""

import bentoml

from api.lifecycle import freeze_heap
from api.middleware import RequestGuard
from api.schemas import Prediction
from api.tracing import bentoml_tracing
from auth.middleware import JWTAuthMiddleware
from settings import get_settings
from training.schema import Employee

settings = get_settings()


# The same tracing option as the real service (off unless the OTEL_* variables turn it on).
@bentoml.service(name="AttritionService", http={"port": 3000}, tracing=bentoml_tracing(settings))
class NoopService:
    def __init__(self) -> None:
        freeze_heap()  # the same process tuning as the real service

    @bentoml.api(route="/predict/attrition")
    async def predict(self, employee: Employee, /) -> Prediction:
        """Validate and answer a constant."""
        return Prediction(
            request_id="00000000-0000-0000-0000-000000000000",
            probability=0.5,
            label="Yes",
            threshold=0.35,
            model_tag="noop",
        )


NoopService.add_asgi_middleware(RequestGuard, max_bytes=settings.max_body_bytes)
NoopService.add_asgi_middleware(JWTAuthMiddleware, settings=settings)
