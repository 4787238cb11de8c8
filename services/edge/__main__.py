"""``python -m services.edge``"""

from __future__ import annotations

from aiohttp import web

from services.edge.app import create_app
from services.edge.settings import EdgeSettings
from shared import logs, tracing
from shared.config import Env, describe
from shared.runtime import (
    Refusal,
    help_if_asked,
    install_uvloop,
    refuse,
    settings_or_exit,
    tune_gc,
)

SUMMARY = ("The edge: the HTTP API (/api/tasks, the OpenAI-compatible /v1), the dashboard at "
           "/dashboard and /metrics, all on EDGE_PORT.")


def load(env: Env) -> EdgeSettings:
    """Everything the edge reads from the environment (its --help lists it)."""
    tracing.endpoint_of(env)
    return EdgeSettings.from_env(env)


def main() -> None:
    help_if_asked("services.edge", SUMMARY, load)
    settings = settings_or_exit("edge", EdgeSettings.from_env)
    logs.configure(settings.common.log_format, settings.common.log_level, "edge")
    log = logs.get("sluice.edge")
    log.info("starting", port=settings.port, model=settings.provider.ai_model,
             provider=str(settings.provider.ai_base_url), settings=describe(settings.common))
    if settings.open_access:
        log.warning("open_access", detail="EDGE_API_KEYS is not set: anyone who can reach this "
                    "port can submit tasks and read results")
    install_uvloop()
    tune_gc()
    tracing.setup("edge")
    try:
        web.run_app(create_app(settings), host=settings.host, port=settings.port,
                    reuse_port=True, shutdown_timeout=settings.shutdown_timeout_s,
                    access_log=None, print=None, handle_signals=True)
    except Refusal as exc:
        refuse("edge", exc)
    finally:
        tracing.shutdown()


if __name__ == "__main__":
    main()
