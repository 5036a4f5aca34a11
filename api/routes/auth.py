"""POST /auth/token: the password grant."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form

from api.deps import ServiceDep
from auth.login import Token
from persistence.models import USERNAME_MAX_LENGTH, USERNAME_PATTERN

router = APIRouter()


@router.post("/auth/token", response_model=Token, responses={400: {}, 429: {}, 503: {}})
async def issue_token(
    username: Annotated[
        str, Form(min_length=1, max_length=USERNAME_MAX_LENGTH, pattern=USERNAME_PATTERN)
    ],
    password: Annotated[str, Form(max_length=1024)],
    svc: ServiceDep,
    grant_type: Annotated[Literal["password"], Form()] = "password",
) -> Any:
    """OAuth2 password grant. Unknown user and wrong password get the same answer."""
    return await svc.password_grant(username, password)
