"""Key rotation and identity-provider outages under load, measured on a real server.

Starts the test OpenID provider (tests/oidc/, keys [A, E]) and a real `bentoml serve` trusting
it on a fresh PostgreSQL database, keeps `--clients` callers predicting with a provider token,
and goes through: the provider publishes key B and signs with it ([B, A, E]); withdraws A
([B, E]); stops; comes back hung (SIGSTOP: it accepts connections and never answers); resumes.
Prints, per phase, the requests answered and refused and their latency; the latency of the
first requests with the new key (each entry worker fetches the key set once); how long tokens
of the withdrawn key kept working; and what a token signed by a key the service has never seen
gets while the provider is down or hung, and how fast.

python -m loadtests.oidc_rotation [--clients 4] [--max-age 10] [--cooldown 5] [--fetch-timeout 3]
"""

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt

from loadtests.abuse import employee
from loadtests.oidc_provider import Client, OpenIDProvider, private_key, signing_key
from tests.harness import Server, temporary_database

SECRET = "oidc-rotation-" + "r" * 40
PREDICT = "/predict/attrition"


@dataclass
class Sample:
    at: float
    key: str  # which key signed the token sent
    status: int
    ms: float


@dataclass
class Load:
    """`clients` callers predicting in a loop with the token of the moment."""

    url: str
    clients: int
    employee: dict[str, Any]
    token: tuple[str, str] = ("", "")  # (key name, token)
    samples: list[Sample] = field(default_factory=list)
    running: bool = True

    async def caller(self, http: httpx.AsyncClient) -> None:
        while self.running:
            key, token = self.token
            started = time.perf_counter()
            try:
                response = await http.post(
                    PREDICT, json=self.employee, headers={"Authorization": f"Bearer {token}"}
                )
                status = response.status_code
            except httpx.HTTPError:
                status = 0
            self.samples.append(Sample(time.monotonic(), key, status, ms_since(started)))

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as http:
            await asyncio.gather(*(self.caller(http) for _ in range(self.clients)))

    def between(self, start: float, end: float, key: str | None = None) -> list[Sample]:
        """Samples answered in [start, end), of tokens signed by `key` (default: any)."""
        return [s for s in self.samples if start <= s.at < end and key in (None, s.key)]


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def summary(name: str, samples: list[Sample]) -> str:
    ok = [s.ms for s in samples if s.status == 200]
    refused: dict[int, int] = {}
    for s in samples:
        if s.status != 200:
            refused[s.status] = refused.get(s.status, 0) + 1
    lat = ""
    if len(ok) >= 2:
        q = statistics.quantiles(ok, n=100)
        lat = f"p50 {q[49]:6.1f} ms  p99 {q[98]:6.1f} ms  max {max(ok):6.1f} ms"
    refusals = ", ".join(f"{n}x{code}" for code, n in sorted(refused.items())) or "none"
    return f"  {name:<34} {len(samples):6d} requests  refused: {refusals:<14} {lat}"


async def probe(url: str, token: str, body: dict[str, Any]) -> tuple[int, float]:
    """One request on a connection of its own (so the entry worker it meets varies)."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        started = time.perf_counter()
        response = await http.post(PREDICT, json=body, headers={"Authorization": f"Bearer {token}"})
        return response.status_code, ms_since(started)


def forged(claims: dict[str, Any], kid: str) -> str:
    """A token signed by a key the provider never published (as one rotated in while down)."""
    key = signing_key("RS256", kid)
    return jwt.encode(claims, private_key(key), "RS256", headers={"kid": kid})


async def measure(args: argparse.Namespace, work: Path, database: str) -> list[str]:
    keys = {"A": signing_key("RS256", "rsa-a"), "B": signing_key("RS256", "rsa-b"),
            "E": signing_key("ES256", "ec-e")}  # fmt: skip
    provider = OpenIDProvider(work / "idp", keys=[keys["A"], keys["E"]], clients=[
        Client("hr-app", claims={"roles": ["predict"]}, ttl=3600)])  # fmt: skip
    env = {
        "ATTRITION_JWT_SECRET": SECRET,
        "ATTRITION_DATABASE_URL": database,
        "ATTRITION_DATA_DIR": str(work / "data"),
        **provider.service_env(
            ATTRITION_OIDC_JWKS_MAX_AGE_SECONDS=str(args.max_age),
            ATTRITION_OIDC_REFRESH_COOLDOWN_SECONDS=str(args.cooldown),
            ATTRITION_OIDC_FETCH_TIMEOUT_SECONDS=str(args.fetch_timeout),
        ),
    }
    if args.model_tag:
        env["ATTRITION_MODEL_TAG"] = args.model_tag
    server = Server("service:AttritionService", env, log=work / "serve.log")
    out: list[str] = []
    body = employee()
    load = Load(server.url, args.clients, body)
    try:
        token_a = await asyncio.to_thread(provider.token, "hr-app")
        # Made before the load starts: generating RSA keys would stall its event loop.
        claims = jwt.decode(token_a, options={"verify_signature": False})
        unknown = [forged(claims, f"never-seen-{n}") for n in range(2 * args.probes)]
        load.token = ("A", token_a)
        running = asyncio.create_task(load.run())
        marks = [time.monotonic()]
        await asyncio.sleep(args.phase)

        baseline = [await probe(server.url, token_a, body) for _ in range(args.probes)]

        # Rotation: B published and signing; the load keeps sending A's token meanwhile.
        marks.append(time.monotonic())
        await asyncio.to_thread(provider.rotate, [keys["B"], keys["A"], keys["E"]])
        token_b = await asyncio.to_thread(provider.token, "hr-app")
        first = [await probe(server.url, token_b, body) for _ in range(args.probes)]
        await asyncio.sleep(args.phase)
        marks.append(time.monotonic())

        # Withdrawal of A: the load keeps A's token until the service refuses it.
        await asyncio.to_thread(provider.rotate, [keys["B"], keys["E"]])
        withdrawn = time.monotonic()
        deadline = withdrawn + args.max_age + 60
        while time.monotonic() < deadline:
            recent = load.between(time.monotonic() - 1, time.monotonic())
            if len(recent) >= 4 and all(s.status == 401 for s in recent):
                break
            await asyncio.sleep(0.1)
        a_samples = load.between(withdrawn, time.monotonic(), "A")
        last_a_ok = max((s.at for s in a_samples if s.status == 200), default=withdrawn)
        first_a_refused = min((s.at for s in a_samples if s.status == 401), default=float("nan"))
        load.token = ("B", token_b)
        marks.append(time.monotonic())
        await asyncio.sleep(args.phase)

        # The provider stopped: past the keys' max age, with cooldowns to retry in.
        marks.append(time.monotonic())
        await asyncio.to_thread(provider.stop)
        await asyncio.sleep(args.max_age + args.cooldown + args.phase)
        down_unknown = [await probe(server.url, t, body) for t in unknown[: args.probes]]
        marks.append(time.monotonic())

        # Back, but hung: connections accepted, never answered.
        await asyncio.to_thread(provider.restart)
        provider.proc.send_signal(signal.SIGSTOP)
        await asyncio.sleep(args.max_age + args.cooldown + args.phase)
        hung_unknown = [await probe(server.url, t, body) for t in unknown[args.probes :]]
        marks.append(time.monotonic())
        provider.proc.send_signal(signal.SIGCONT)
        token_c = await asyncio.to_thread(provider.token, "hr-app")
        back = [await probe(server.url, token_c, body) for _ in range(args.probes)]
        await asyncio.sleep(args.phase)
        marks.append(time.monotonic())

        load.running = False
        await running
        steady = load.between(marks[0], marks[1])
        out += [
            f"oidc rotation: {args.clients} clients, keys max age {args.max_age:g} s, cooldown "
            f"{args.cooldown:g} s, fetch timeout {args.fetch_timeout:g} s, 2 entry workers",
            summary("steady (key A)", steady),
            summary("B published and signing", load.between(marks[1], marks[2])),
            summary("A withdrawn (load still on A)", a_samples),
            summary("after A refused (load on B)", load.between(marks[3], marks[4], "B")),
            summary("provider stopped", load.between(marks[4], marks[5], "B")),
            summary("provider hung", load.between(marks[5], marks[6], "B")),
            summary("provider back", load.between(marks[6], marks[7], "B")),
            "  single requests with A's token before the rotation (new connection each): "
            + ", ".join(f"{code} in {ms:.1f} ms" for code, ms in baseline),
            "  first requests with B's token (new connection each; each worker fetches once): "
            + ", ".join(f"{code} in {ms:.1f} ms" for code, ms in first),
            f"  A's tokens still accepted {last_a_ok - withdrawn:.1f} s after withdrawal, first "
            f"refused after {first_a_refused - withdrawn:.1f} s (max age {args.max_age:g} s)",
            "  never-seen key, provider stopped: "
            + ", ".join(f"{code} in {ms:.1f} ms" for code, ms in down_unknown),
            "  never-seen key, provider hung: "
            + ", ".join(f"{code} in {ms:.1f} ms" for code, ms in hung_unknown),
            "  first requests once the provider is back: "
            + ", ".join(f"{code} in {ms:.1f} ms" for code, ms in back),
        ]
    finally:
        load.running = False
        server.stop()
        if provider.proc.poll() is None:
            provider.proc.send_signal(signal.SIGCONT)
            provider.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.oidc_rotation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--max-age", type=float, default=10, help="ATTRITION_OIDC_JWKS_MAX_AGE_SECONDS"
    )
    parser.add_argument(
        "--cooldown", type=float, default=5, help="ATTRITION_OIDC_REFRESH_COOLDOWN_SECONDS"
    )
    parser.add_argument(
        "--fetch-timeout", type=float, default=3, help="ATTRITION_OIDC_FETCH_TIMEOUT_SECONDS"
    )
    parser.add_argument("--phase", type=float, default=5, help="seconds of load in each phase")
    parser.add_argument("--probes", type=int, default=4, help="single requests after each change")
    parser.add_argument(
        "--model-tag", help="model to serve (default: ATTRITION_MODEL_TAG or latest)"
    )
    args = parser.parse_args(argv)  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="oidc-rotation-") as tmp,
        temporary_database("attrition_oidc") as database,
    ):
        for line in asyncio.run(measure(args, Path(tmp), database)):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
