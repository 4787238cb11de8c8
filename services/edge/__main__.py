"""``python -m services.edge``"""

from __future__ import annotations

from aiohttp import web

from services.edge.app import create_app
from services.edge.settings import EdgeSettings
from shared import logs, tracing
from shared.config import describe
from shared.runtime import Refusal, install_uvloop, refuse, settings_or_exit, tune_gc


def main() -> None:
    settings = settings_or_exit("edge", EdgeSettings.from_env)
    logs.configure(settings.common.log_format, settings.common.log_level)
    log = logs.get("sluice.edge")
    log.info("starting", port=settings.port, settings=describe(settings.common))
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
