"""GET /health: the served model, uptime, the database, the inference log and the internals gate."""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import APIRouter

from api import internals
from api.deps import ServiceDep

router = APIRouter()
# /health's file reads (the inference log's counts) on a thread of their own, never queued
# behind route handlers that wait on the database in the shared pool.
HEALTH_READS = ThreadPoolExecutor(1, "health")


@router.get("/health")
async def health(svc: ServiceDep) -> dict[str, Any]:
    """Liveness with the served model, uptime, and the state of the database and of the
    inference log: `degraded` when either is not ok. Never waits on the database longer than
    ATTRITION_USER_LOOKUP_SECONDS."""
    database = await svc.auth.users.database()
    logging_state = (
        await asyncio.get_running_loop().run_in_executor(HEALTH_READS, svc.log.state)
        if svc.log is not None
        else {"state": "off"}
    )
    healthy = database == "ok" and logging_state["state"] in ("ok", "off")
    return {
        "status": "ok" if healthy else "degraded",
        "model_tag": svc.predictor.models[svc.predictor.answering()].tag,
        "uptime_seconds": round(time.monotonic() - svc.started, 1),
        "database": database,
        "inference_log": logging_state,
        "internals": internals.gate().as_dict(),
    }
