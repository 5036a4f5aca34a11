"""The FastAPI app mounted at / on the entry service: the GET and form routes, one router per
resource, and the error answers they share."""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from api.middleware import invalid_request
from api.routes import auth, health, history, model, monitoring, outcomes


async def database_unavailable(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": "database unavailable; try again shortly"}, status_code=503)


def create_app() -> FastAPI:
    app = FastAPI(title="Attrition service: status and auth", docs_url=None, redoc_url=None)
    for routes in (health, model, auth, history, outcomes, monitoring):
        app.include_router(routes.router)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(OperationalError, database_unavailable)
    # Every connection busy (or stuck on a silent database).
    app.add_exception_handler(PoolTimeout, database_unavailable)
    return app
