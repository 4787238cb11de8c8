"""An outage of the whole mock: every chat call answered with one HTTP status, until healed.

Set at start with MOCKAI_FAIL_STATUS, or at run time: ``POST /mock/outage`` with
``{"status": 503}`` starts one (``{"status": 0}`` or ``DELETE /mock/outage`` heals it). For
what a fault spec in a request cannot show: a provider that fails *every* caller, whatever
they send, as a real one does in an outage, and that comes back.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from .protocol import error_body, status_error_defaults


class Outage:
    __slots__ = ("status",)

    def __init__(self, status: int = 0) -> None:
        self.status = status  # 0: no outage

    def answer(self) -> web.Response | None:
        """The refusal every call gets during the outage; None when there is none."""
        if not self.status:
            return None
        error_type, code = status_error_defaults(self.status)
        body = error_body(f"mock: outage, every call answered {self.status}", error_type, code)
        return web.Response(body=body, status=self.status, content_type="application/json")


OUTAGE_KEY = web.AppKey("mockai_outage", Outage)


async def set_outage(request: web.Request) -> web.Response:
    outage = request.app[OUTAGE_KEY]
    if request.method == "DELETE":
        outage.status = 0
    else:
        try:
            status = orjson.loads(await request.read()).get("status")
        except (orjson.JSONDecodeError, AttributeError):
            status = None
        if isinstance(status, bool) or not isinstance(status, int) or not (
                status == 0 or 400 <= status <= 599):
            return web.Response(body=error_body("status: 0 (heal) or an HTTP status 400-599",
                                                code="invalid_outage"),
                                status=400, content_type="application/json")
        outage.status = status
    return web.Response(body=orjson.dumps({"status": outage.status}),
                        content_type="application/json")


def install(app: web.Application, status: int) -> None:
    app[OUTAGE_KEY] = Outage(status)
    app.router.add_post("/mock/outage", set_outage)
    app.router.add_delete("/mock/outage", set_outage)
