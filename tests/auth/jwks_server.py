"""A small HTTP server with an OpenID discovery document and a JWKS the test changes, counting
key fetches, for unit tests of the key cache (the real provider is in tests/integration)."""

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt

from loadtests.oidc_provider import private_key


@cache
def loaded(jwk: str) -> Any:
    """The key object of a private JWK (loading an RSA key checks it, which takes a while)."""
    return private_key(json.loads(jwk))


def public(jwk: dict[str, Any]) -> dict[str, Any]:
    """A private JWK without its private members."""
    return {k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}


@dataclass
class JWKSServer:
    keys: list[dict[str, Any]]  # private JWKs; the server publishes their public halves
    url: str = ""
    status: int = 200  # of the JWKS answer; not 200 = a provider in trouble
    delay: float = 0.0  # before each JWKS answer
    issuer_override: str | None = None  # what discovery claims the issuer is
    fetches: int = 0  # JWKS requests answered
    extra: list[dict[str, Any]] = field(default_factory=list)  # published as they are
    httpd: ThreadingHTTPServer | None = None

    def down(self) -> None:
        """Stop answering: connections are refused from now on."""
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    @property
    def issuer(self) -> str:
        return self.url

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public(k) for k in self.keys] + self.extra}

    def sign(self, claims: dict[str, Any], key: dict[str, Any], **header: Any) -> str:
        """A token signed by one of the keys, with its kid and alg unless `header` says else."""
        headers = {"kid": key["kid"], **header}
        alg = headers.pop("alg", key.get("alg") or ("ES256" if key["kty"] == "EC" else "RS256"))
        return jwt.encode(claims, loaded(json.dumps(key)), algorithm=alg, headers=headers)

    def claims(self, **over: Any) -> dict[str, Any]:
        now = time.time()
        base = {
            "iss": self.issuer,
            "aud": "urn:attrition:api",
            "sub": "client-1",
            "iat": now,
            "exp": now + 300,
            "roles": ["predict"],
        }
        return {**base, **over}


@contextmanager
def serving(server: JWKSServer) -> Iterator[JWKSServer]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if self.path == "/.well-known/openid-configuration":
                issuer = server.issuer_override or server.issuer
                body: Any = {"issuer": issuer, "jwks_uri": f"{server.url}/jwks"}
                status = 200
            elif self.path == "/jwks":
                body, status = server.jwks(), server.status  # the set as it is when asked
                server.fetches += 1
                time.sleep(server.delay)
            else:
                body, status = {}, 404
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    server.httpd = httpd
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield server
    finally:
        server.down()
