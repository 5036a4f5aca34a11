"""Load test a real server on a fresh database with locust, then check the inference log against it.

python -m loadtests.run --users 64 --spawn-rate 16 --run-time 60s
"""

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.harness import PROJECT_DIR, Server, auth_cli, inference_rows, temporary_database

LOCUSTFILE = PROJECT_DIR / "loadtests" / "locustfile.py"
LOCUST_CONF = PROJECT_DIR / "loadtests" / "locust.conf"
USERNAME = "loadtest"


def create_user(env: dict[str, str], password: str) -> None:
    """Admin, so the same user may both predict and read every subject's history."""
    out = auth_cli(
        env, "create-user", USERNAME, "--role", "admin", "--password-stdin", stdin=f"{password}\n"
    )
    if out.returncode != 0:
        raise RuntimeError(f"creating the load-test user failed:\n{out.stderr[-2000:]}")


def locust_command(args: argparse.Namespace, host: str, reports: Path) -> list[str]:
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--config", str(LOCUST_CONF)]
    cmd += ["--host", host, "--html", str(reports / "report.html")]
    cmd += ["--csv", str(reports / "locust")]
    # Unset options fall back to locust.conf, the one place the defaults live.
    for option in ("users", "spawn_rate", "run_time", "max_p95_ms", "max_p99_ms"):
        value = getattr(args, option)
        if value is not None:
            cmd += [f"--{option.replace('_', '-')}", str(value)]
    return cmd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__)
    parser.add_argument("--users", type=int, help="concurrent users (locust.conf: 64)")
    parser.add_argument("--spawn-rate", type=float, help="users started per second (16)")
    parser.add_argument("--run-time", help="how long to load, e.g. 60s, 5m (60s)")
    parser.add_argument("--max-p95-ms", type=float, help="fail above this p95, logins aside (500)")
    parser.add_argument("--max-p99-ms", type=float, help="fail above this p99, logins aside (1000)")
    parser.add_argument("--reports-dir", type=Path, default=Path("reports/loadtest"))
    args = parser.parse_args(argv)

    reports = args.reports_dir.resolve()
    reports.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="attrition-loadtest-"))
    count_file = work / "counts.json"
    password = secrets.token_urlsafe(24)
    with temporary_database("attrition_loadtest") as url:
        env = {
            "ATTRITION_DATABASE_URL": url,
            "ATTRITION_JWT_SECRET": secrets.token_urlsafe(48),
            "ATTRITION_DATA_DIR": str(work / "data"),
        }
        create_user(env, password)
        server = Server("service:AttritionService", env, log=work / "server.log")
        print(f"server {server.url} on database {url.rsplit('/', 1)[-1]}", flush=True)
        try:
            locust = subprocess.run(
                locust_command(args, server.url, reports),
                cwd=PROJECT_DIR,
                env={
                    **os.environ,
                    "LOADTEST_USERNAME": USERNAME,
                    "LOADTEST_PASSWORD": password,
                    "LOADTEST_COUNT_FILE": str(count_file),
                },
                check=False,
            )
        finally:
            # SIGTERM: the workers flush the inference log before they exit.
            server_code = server.stop()
            shutil.copy(work / "server.log", reports / "server.log")
        rows = inference_rows(url)

    problems = []
    if locust.returncode != 0:
        problems.append(f"locust exited {locust.returncode} (failures or latency over the bounds)")
    if server_code != 0:
        problems.append(f"server exited {server_code} on SIGTERM (see {reports / 'server.log'})")
    if count_file.exists():
        counts = json.loads(count_file.read_text())
        predicted = counts["predicted_employees"]
        verdict = "OK" if rows == predicted else "MISMATCH"
        print(
            f"inference log rows: {rows}, successful predictions counted by locust: {predicted} "
            f"({counts['single_ok']} single, {counts['batch_employees_ok']} in "
            f"{counts['batch_ok']} batches) -> {verdict}"
        )
        if rows != predicted:
            problems.append(f"inference log has {rows} rows for {predicted} predictions")
    else:
        problems.append("locust wrote no prediction counts")
    print(f"reports: {reports / 'report.html'}, {reports / 'locust_stats.csv'}")
    if problems:
        # Keep the data dir: the inference log's files left there hold records the database did not get.
        print(f"FAILED: {'; '.join(problems)} (work dir kept: {work})", file=sys.stderr)
        return 1
    shutil.rmtree(work)
    print("load test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
