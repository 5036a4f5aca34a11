"""Application settings: one validated class, read from ATTRITION_* variables and .env."""

import json
import logging
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_DIR = Path(__file__).resolve().parent
log = logging.getLogger("attrition.settings")

# Secrets that appear in docs and tutorials; never acceptable outside development mode.
KNOWN_DEFAULT_SECRETS = frozenset(
    {
        "secret",
        "changeme",
        "change-me",
        "changethis",
        "your-secret-key",
        "supersecret",
        "development",
        "dev-secret",
        "jwt-secret",
        "please-change-me-in-production",
    }
)
MIN_SECRET_BYTES = 32
DEFAULT_PUBLIC_PATHS = (
    "/livez",
    "/readyz",
    "/healthz",
    "/health",
    "/metrics",
    "/docs.json",
    "/",
    "/auth/token",
)

# Asymmetric only: a provider's keys are public, so an HMAC "key" from its JWKS proves nothing.
ProviderAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"
]
# Hosts where a provider may be reached over plain HTTP (a sidecar, the tests).
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def parse_role_map(value: object) -> object:
    """`a=b,a=c,d=e` -> {"a": ["b", "c"], "d": ["e"]}; JSON objects and dicts pass through."""
    if not isinstance(value, str):
        return value
    if value.strip().startswith("{"):
        return json.loads(value)
    mapping: dict[str, list[str]] = {}
    for pair in filter(None, (p.strip() for p in value.split(","))):
        name, sep, role = (part.strip() for part in pair.partition("="))
        if not sep or not name or not role:
            raise ValueError(f"expected provider_role=service_role, got {pair!r}")
        mapping.setdefault(name, []).append(role)
    return mapping


class Settings(BaseSettings):
    """Everything the application (not the BentoML runtime) can be told."""

    # The .env next to this file, not in the current directory: the server and the CLI, started
    # from anywhere, read the same one.
    model_config = SettingsConfigDict(
        env_prefix="ATTRITION_", env_file=PROJECT_DIR / ".env", extra="ignore"
    )

    dev_mode: bool = False
    """Development mode: allows a generated JWT secret and the development-only switches (turning auth or the inference log off, more public paths). Never in production."""

    model_tag: str = "attrition:latest"
    """Model to serve from the BentoML model store; pin a version (attrition:abc123) in production."""

    challenger_tag: str | None = None
    """A second model scored on every request as a shadow (recorded, never returned) and the one `python -m persistence promote` makes answer; unset or empty = none (empty turns off one an image carries). Pin a version in production."""

    model_choice_seconds: float = Field(5.0, gt=0, le=300)
    """How often each worker reads the newest promotion or rollback (which of the two models answers)."""

    max_batch_size: int = Field(1000, ge=1, le=100_000)
    """Most employees accepted by one call of the batch route."""

    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    """Largest request body accepted, in bytes; larger bodies get 413."""

    runner_backend: Literal["auto", "onnx", "sklearn"] = "auto"
    """How the runner scores: ONNX Runtime when the model carries a verified export (auto), or sklearn."""

    fast_path: Literal["auto", "off"] = "auto"
    """The fast path and the uvicorn and metrics patches (api/internals.py): auto = on when the installed BentoML, uvicorn and Starlette are the versions they were written for; off = BentoML's full stack serves everything."""

    runner_batching: bool = True
    """Adaptive batching in the runner; off = every request is scored on its own (for comparison)."""

    entry_batch_lanes: int = Field(2, ge=1, le=64)
    """Runner calls an entry worker keeps in flight; requests arriving meanwhile are sent together."""

    runner_max_batch_size: int = Field(1000, ge=2)
    """Most employees the runner scores in one adaptive batch."""

    runner_max_latency_ms: int = Field(1000, ge=1)
    """Latency bound the runner's adaptive batching dispatcher aims for."""

    # The standard OpenTelemetry variables (no ATTRITION_ prefix): api/tracing.py turns them
    # into BentoML's tracing option.
    otel_traces_exporter: Literal["none", "otlp"] = Field(
        "none", validation_alias="OTEL_TRACES_EXPORTER"
    )
    """otlp exports spans over OTLP/HTTP (OTEL_EXPORTER_OTLP_ENDPOINT); none (default) builds no spans."""

    otel_exporter_otlp_protocol: Literal["http/protobuf"] = Field(
        "http/protobuf",
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"
        ),
    )
    """Also read from OTEL_EXPORTER_OTLP_PROTOCOL; only http/protobuf (the gRPC exporter is not installed)."""

    otel_traces_sampler: Literal[
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    ] = Field("parentbased_always_on", validation_alias="OTEL_TRACES_SAMPLER")
    """BentoML always follows a sampled parent; the rest sets the share of new traces kept."""

    otel_traces_sampler_arg: float | None = Field(
        None, ge=0.0, le=1.0, validation_alias="OTEL_TRACES_SAMPLER_ARG"
    )
    """The ratio of the *traceidratio samplers (default 1.0)."""

    model_placement: Literal["service", "inline"] = "service"
    """Where the model runs: service = its own BentoML service with adaptive batching (a model with resources of its own, separate scaling, the split topology); inline = in every entry worker, scoring the worker's coalesced batches on its own threads (one machine, a small CPU model: no hop, the most predictions per core, a copy of the models per worker)."""

    model_url: str | None = None
    """URL of a separately served model service (split topology), e.g. http://attrition-model:3000;
    unset = the model service runs inside this server (one `bentoml serve`)."""

    model_retry_seconds: float = Field(20.0, ge=0)
    """How long a prediction keeps retrying a model service it cannot reach (restarting) before 503."""

    shutdown_delay_seconds: float = Field(0.0, ge=0)
    """After SIGTERM, keep serving this long (with /readyz 503) so load balancers stop sending."""

    drain_timeout_seconds: float = Field(60.0, gt=0)
    """Longest the model worker waits after SIGTERM for its server's entry workers to finish."""

    migrate_on_start: bool = True
    """Apply pending migrations before the workers start; off where a migration Job does it."""

    data_dir: Path = PROJECT_DIR / "data"
    """Folder for local state (SQLite database, the inference log's write-ahead and dead-letter files, the development JWT secret)."""

    database_url: str | None = None
    """SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db; unset = SQLite in data_dir."""

    auth_enabled: bool = True
    """Check bearer tokens on every non-public route (may be turned off only in dev_mode)."""

    public_paths: tuple[str, ...] = DEFAULT_PUBLIC_PATHS
    """Exact paths served without a token (Swagger UI assets are always public); outside dev_mode
    at most the defaults."""

    jwt_algorithm: Literal["HS256", "RS256", "ES256"] = "HS256"
    """The one algorithm accepted (RFC 8725 allowlist). RS256/ES256 verify with jwt_public_key_file."""

    jwt_secret: SecretStr | None = None
    """HS256 key, at least 32 bytes. Required unless dev_mode (which generates one)."""

    jwt_public_key_file: Path | None = None
    """PEM public key of the identity provider, for RS256/ES256."""

    jwt_private_key_file: Path | None = None
    """PEM private key, only for minting RS256/ES256 tokens with `python -m auth token`."""

    jwt_issuer: str = "attrition-service"
    """Expected `iss` claim."""

    jwt_audience: str = "attrition-api"
    """Expected `aud` claim."""

    jwt_leeway_seconds: int = Field(30, ge=0, le=300)
    """Clock skew tolerated on exp/iat/nbf."""

    access_token_ttl_seconds: int = Field(3600, ge=60)
    """Lifetime of tokens from POST /auth/token."""

    local_tokens: bool = True
    """Accept the service's own tokens (POST /auth/token, `python -m auth token`); off = only the identity provider's (needs oidc_issuer)."""

    oidc_issuer: str | None = None
    """Issuer of an OpenID provider whose access tokens are accepted, exactly as in their `iss` (e.g. https://sso.example.com/realms/hr); its keys come from /.well-known/openid-configuration. Unset: only the service's own tokens."""

    oidc_audience: str | None = None
    """The `aud` the provider puts in access tokens for this service (required with oidc_issuer)."""

    oidc_roles_claim: str = "roles"
    """Claim with the caller's roles: a claim name, or a dotted path such as realm_access.roles; a list of strings, or a space-separated string such as `scope`."""

    oidc_role_map: Annotated[dict[str, list[str]], NoDecode] = Field(default_factory=dict)
    """Provider role -> service roles, as JSON ({"hr-analysts": ["predict", "history"]}) or `hr-analysts=predict,hr-analysts=history,hr-admins=admin`. Empty: provider roles named like the service's (predict, history, outcomes, admin) count as they are; others are ignored."""

    oidc_subject_prefix: str | None = None
    """Put before the provider's `sub` to name a caller in the history and in erasures; unset = the issuer and '#'. Must hold a character local usernames cannot (such as ':' or '#'), so the two never collide."""

    oidc_algorithms: tuple[ProviderAlgorithm, ...] = ("RS256", "PS256", "ES256")
    """Signature algorithms accepted from the provider; each key is pinned to one (its `alg`, else RS256 for RSA and ES256 for P-256)."""

    oidc_jwks_max_age_seconds: float = Field(300.0, gt=0)
    """How long the provider's keys are used before they are fetched again (in the background); a withdrawn key stops working within this time."""

    oidc_refresh_cooldown_seconds: float = Field(30.0, ge=0)
    """Least time between two fetches of the provider's keys for unknown key ids (so made-up ids cannot make the service hammer the provider), and between retries of a failing provider."""

    oidc_fetch_timeout_seconds: float = Field(3.0, gt=0, le=60)
    """Longest a request waits for the provider's keys (a token signed by a key not seen before), and the timeout of each fetch."""

    oidc_ca_file: Path | None = None
    """PEM file of the certificate authorities to trust for the provider's HTTPS (an internal CA); unset = the public ones."""

    login_max_failures: int = Field(5, ge=1)
    """Consecutive failed logins for one username before it is locked."""

    login_lockout_seconds: int = Field(300, ge=1)
    """How long a username stays locked after too many failures; failures older than this expire."""

    login_concurrency: int = Field(1, ge=1, le=64)
    """Password checks one worker runs at once (each Argon2 check takes 64 MiB and tens of milliseconds of CPU)."""

    login_wait_seconds: float = Field(2.0, ge=0)
    """How long a login waits for a free password check before 503 with Retry-After."""

    max_token_bytes: int = Field(8192, ge=512)
    """Longest bearer token accepted; longer ones get 401 before any parsing."""

    http_max_header_bytes: int = Field(32 * 1024, ge=4096)
    """Largest request line plus headers, in bytes; larger requests get 431 and are closed."""

    http_header_timeout_seconds: float = Field(10.0, gt=0, le=300)
    """Time a client has to send a request's complete headers; slower ones get 408 and are closed."""

    http_body_timeout_seconds: float = Field(20.0, gt=0, le=300)
    """Time a client has to send a request's whole body, from the end of its headers; slower ones
    get 408 and are closed (a 4 MiB body, the default max_body_bytes, needs about 1.7 Mbit/s)."""

    log_enabled: bool = True
    """Record every prediction in the inference log (may be turned off only in dev_mode)."""

    log_batch_bytes: int = Field(1 << 20, ge=4096)
    """Most bytes of records (about 1 KB each) the writer copies into the database in one transaction."""

    log_flush_interval_ms: int = Field(200, ge=1)
    """Longest a record waits in the write-ahead file before the writer copies it."""

    log_retry_seconds: float = Field(2.0, gt=0)
    """How often a writer that cannot reach the database tries again."""

    log_fsync: bool = False
    """Wait for the disk (one fdatasync shared by concurrent requests) before answering: also survives a power loss, at a latency cost. Off: the page cache, which survives any process crash."""

    log_retention_days: int | None = Field(None, ge=1)
    """Days a prediction is kept; `python -m persistence prune` deletes older rows. Unset: keep all."""

    user_cache_seconds: float = Field(5.0, ge=0)
    """How long a worker trusts a user's active flag and roles before reading them again."""

    user_lookup_seconds: float = Field(1.0, gt=0, le=60)
    """Longest a request waits for its user's record; then the last known state is used, for predictions only."""

    db_statement_timeout_seconds: float = Field(30.0, gt=0)
    """Longest database statement of a request (history, outcomes, login); the CLI and batch jobs have none."""

    @field_validator("challenger_tag")
    @classmethod
    def _no_challenger(cls, value: str | None) -> str | None:
        # An empty value overrides the one an image has baked in (a ConfigMap entry, -e).
        return value or None

    @field_validator("oidc_role_map", mode="before")
    @classmethod
    def _role_map(cls, value: object) -> object:
        return parse_role_map(value)

    @model_validator(mode="after")
    def _placement(self) -> "Settings":
        if self.model_placement == "inline" and self.model_url is not None:
            raise ValueError(
                "ATTRITION_MODEL_PLACEMENT=inline scores in the entry workers: unset ATTRITION_MODEL_URL"
            )
        return self

    @model_validator(mode="after")
    def _provider(self) -> "Settings":
        if self.oidc_issuer is None:
            if not self.local_tokens:
                raise ValueError("ATTRITION_LOCAL_TOKENS=false needs ATTRITION_OIDC_ISSUER")
            return self
        url = urlsplit(self.oidc_issuer)
        if url.scheme != "https" and not (url.scheme == "http" and url.hostname in LOOPBACK_HOSTS):
            raise ValueError(
                "ATTRITION_OIDC_ISSUER must be an https:// URL (http only on loopback)"
            )
        if not self.oidc_audience:
            raise ValueError("ATTRITION_OIDC_ISSUER needs ATTRITION_OIDC_AUDIENCE")
        if self.oidc_issuer == self.jwt_issuer:
            raise ValueError("ATTRITION_OIDC_ISSUER must differ from ATTRITION_JWT_ISSUER")
        if not self.oidc_algorithms:
            raise ValueError("ATTRITION_OIDC_ALGORITHMS must name at least one algorithm")
        return self

    def secured(self) -> "Settings":
        """These settings with a usable JWT key, or ValueError when they are unsafe.

        Called when the service starts and by the CLI, not at import, so `bentoml build` needs no
        secret. Outside dev_mode a short or well-known secret and the development-only switches are
        refused; in dev_mode a secret is generated (and kept in data_dir so every worker shares it).
        """
        if not self.dev_mode:
            self.refuse_dev_only_switches()
        if not self.local_tokens:  # nothing is signed or verified with a local key
            return self
        if self.jwt_algorithm != "HS256":
            if self.jwt_public_key_file is None:
                raise ValueError(f"{self.jwt_algorithm} needs ATTRITION_JWT_PUBLIC_KEY_FILE")
            return self
        secret = self.jwt_secret.get_secret_value() if self.jwt_secret else ""
        weak = len(secret.encode()) < MIN_SECRET_BYTES or secret.lower() in KNOWN_DEFAULT_SECRETS
        if not weak:
            return self
        if not self.dev_mode:
            raise ValueError(
                f"ATTRITION_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes and not a known "
                "default (generate one: python -c 'import secrets; print(secrets.token_urlsafe(48))'); "
                "or set ATTRITION_DEV_MODE=true for a generated development secret"
            )
        return self.model_copy(update={"jwt_secret": SecretStr(dev_secret(self.data_dir))})

    def refuse_dev_only_switches(self) -> None:
        """ValueError naming every switch that breaks a promise of the service (every route but
        the public ones needs a token; every answered prediction has its record) when set."""
        refused = []
        if not self.auth_enabled:
            refused.append("ATTRITION_AUTH_ENABLED=false (every route would answer anyone)")
        if not self.log_enabled:
            refused.append("ATTRITION_LOG_ENABLED=false (predictions would be answered unrecorded)")
        extra = [p for p in self.public_paths if p not in DEFAULT_PUBLIC_PATHS]
        if extra:  # e.g. /predict/history: everyone's records to anyone
            refused.append(f"ATTRITION_PUBLIC_PATHS beyond the defaults ({', '.join(extra)})")
        if refused:
            raise ValueError(f"only allowed with ATTRITION_DEV_MODE=true: {'; '.join(refused)}")

    def for_minting(self) -> "Settings":
        """Settings for minting tokens outside the server (the CLI), or ValueError.

        A server started by `make serve` runs in development mode and keeps its generated secret
        in data_dir; a shell without ATTRITION_DEV_MODE and without a key of its own uses that
        secret, as that server does. Nothing is generated here.
        """
        inherit = (
            self.jwt_algorithm == "HS256"
            and self.jwt_secret is None
            and not self.dev_mode
            and dev_secret_path(self.data_dir).exists()
        )
        return (self.model_copy(update={"dev_mode": True}) if inherit else self).secured()

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'attrition.db'}"


def dev_secret_path(data_dir: Path) -> Path:
    return data_dir / "dev-jwt-secret"


def dev_secret(data_dir: Path) -> str:
    """A generated HS256 secret kept in data_dir, so every worker and the CLI share it."""
    path = dev_secret_path(data_dir)
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = data_dir / f".dev-jwt-secret.{os.getpid()}"
        tmp.write_text(secrets.token_urlsafe(48))
        tmp.chmod(0o600)
        try:
            os.link(tmp, path)  # atomic and exclusive: concurrent workers keep the first secret
            log.warning("development mode: generated a JWT secret in %s", path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


@lru_cache
def get_settings() -> Settings:
    """The settings, built once per process."""
    return Settings()
