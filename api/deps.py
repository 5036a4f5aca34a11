"""Typed dependencies of the FastAPI routes: the entry service, the caller, a database session."""

from collections.abc import Iterator
from typing import Annotated, Any

import bentoml
from fastapi import Depends, Request
from sqlmodel import Session

from auth.middleware import Principal


def caller(request: Request) -> Principal | None:
    """The authenticated principal (None when auth is off in development mode)."""
    return getattr(request.state, "principal", None)


# The entry service's instance of this worker (service.py's AttritionService).
ServiceDep = Annotated[Any, Depends(bentoml.get_current_service)]
CurrentUser = Annotated[Principal | None, Depends(caller)]


def get_session(svc: ServiceDep) -> Iterator[Session]:
    with Session(svc.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
