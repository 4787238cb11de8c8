"""The edge: ``create_app(settings)`` builds the aiohttp application; no I/O at import."""

from __future__ import annotations

import time

from aiohttp import web

from services.edge import openapi
from services.edge.context import SETTINGS, TASK_ID_KEY, resources
from services.edge.openai.batch import api as batch_api
from services.edge.openai.batch import files
from services.edge.openai.batch import runner as batch_runner
from services.edge.openai.chat import api as openai_api
from services.edge.openai.responses import api as responses_api
from services.edge.ops import dashboard, provider_probe
from services.edge.ops import metrics as metrics_view
from services.edge.ops import status as views_status
from services.edge.plumbing.auth import TENANT, authenticate
from services.edge.plumbing.errors import Handler, error_for
from services.edge.settings import EdgeSettings
from services.edge.tasks import dead_letters, events, feeds, protocol
from services.edge.tasks import views as views_tasks
from services.edge.webhooks import delivery
from services.edge.webhooks import views as webhooks
from shared import logs, metrics, tracing

log = logs.get("sluice.edge")
CLIENT_GONE = 499  # nginx's "client closed request", for the summary line only


@web.middleware
async def edge_layer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one layer around every handler (one, not three: it runs on every submit):
    the API key, errors as JSON, and one summary line per request, with no bodies, keys or
    prompts."""
    started = time.perf_counter()
    status = 500
    traceparent = request.headers.get("traceparent")
    # Lines logged while this request is handled carry its tenant and the client's trace id
    # (logs.Work); reset at the end (one connection's requests share an asyncio task).
    work = logs.Work(traceparent)
    bound = logs.WORK.set(work)
    try:
        try:
            tracing.incoming.set(traceparent)
            try:
                authenticate(request)
            finally:
                work.tenant = request.get(TENANT)  # once the key is checked (or refused)
            response = await handler(request)
        except ConnectionResetError:
            status = CLIENT_GONE
            log.info("client_disconnected", method=request.method, path=request.path)
            # Nobody to answer. Raised on, aiohttp would log it at error level with a
            # traceback (any exception out of a handler is a 500 to it); an answer it fails to
            # write to the closed socket is dropped quietly.
            gone = web.Response(status=CLIENT_GONE)
            gone.force_close()
            return gone
        except Exception as exc:
            response = error_for(request, exc)
        status = response.status
        return response
    finally:
        elapsed = time.perf_counter() - started
        metrics_view.observe(request, status, elapsed)
        if status >= 400 or not _is_poll(request):
            log.info("request", method=request.method, path=request.path, status=status,
                     ms=round(elapsed * 1000, 2),
                     task_id=request.get(TASK_ID_KEY) or request.match_info.get("id"))
        logs.WORK.reset(bound)


def _is_poll(request: web.Request) -> bool:
    """A request that repeats on a timer (health checks, scrapes, the dashboard's reads): no
    access line unless LOG_POLLS (they were 98% of an edge's lines with one dashboard open).
    A refused or failed one is logged all the same."""
    path = request.path
    if path == "/api/health":
        return True
    if request.method != "GET" or request.app[SETTINGS].log_polls:
        return False
    return path == "/metrics" or path.startswith(("/api/admin/", "/dashboard"))


def create_app(settings: EdgeSettings) -> web.Application:
    # client_max_size is a backstop: read_json enforces MAX_BODY_BYTES while streaming.
    # auto_decompress off: aiohttp would inflate a compressed body as it arrives, on the event
    # loop and before any handler (so before authentication); read_json refuses it, or inflates
    # it itself in bounded steps. handler_cancellation off (run_app's default; aiohttp's test
    # server turns it on): a client that leaves is seen by the handler, which logs it and lets
    # its task go on. Both set here, not by whoever runs the app, so they always hold.
    app = web.Application(client_max_size=settings.max_body_bytes + 1,
                          middlewares=[edge_layer],
                          handler_args={"auto_decompress": False,
                                        "handler_cancellation": False})
    app[SETTINGS] = settings
    protocol.models(settings)  # the request models with this edge's limits, built here once
    metrics.configure(settings.metrics)
    app.cleanup_ctx.append(resources)
    app.cleanup_ctx.append(feeds.feeds_ctx)
    app.cleanup_ctx.append(metrics_view.rollup_ctx)
    app.cleanup_ctx.append(provider_probe.probe_ctx)
    app.on_shutdown.append(feeds.close_feeds)
    r = app.router
    r.add_post("/api/tasks", views_tasks.create_task)
    r.add_get("/api/tasks/{id}", views_tasks.get_task)
    r.add_delete("/api/tasks/{id}", views_tasks.cancel_task)
    r.add_get("/api/tasks/{id}/events", events.task_events)
    r.add_post("/api/tasks/{id}/retry", dead_letters.retry_task)
    r.add_get("/api/dead-letters", dead_letters.list_dead_letters)
    r.add_get("/api/health", views_status.health)
    r.add_get("/api/async-status", views_status.async_status)
    r.add_get("/api/ai-status", views_status.ai_status)
    r.add_get("/api/openapi.json", openapi.serve)
    r.add_get("/metrics", metrics_view.serve)
    dashboard.add_routes(app)
    r.add_post("/v1/chat/completions", openai_api.chat_completions)
    r.add_get("/v1/models", openai_api.list_models)
    r.add_post("/v1/responses", responses_api.create)
    r.add_get("/v1/responses/{id}", responses_api.retrieve)
    r.add_delete("/v1/responses/{id}", responses_api.delete)
    r.add_post("/v1/responses/{id}/cancel", responses_api.cancel)
    r.add_get("/v1/responses/{id}/input_items", responses_api.input_items)
    if settings.batch_api_on:
        _add_batch_api(app)
    return app


def _add_batch_api(app: web.Application) -> None:
    """BATCH_API: the routes, the batch runner and the webhook sender."""
    app[files.UPLOADS] = files.upload_slots(app[SETTINGS].batch_api)
    app.cleanup_ctx.append(batch_runner.runner_ctx)
    app.cleanup_ctx.append(delivery.webhooks_ctx)
    r = app.router
    r.add_post("/v1/files", files.upload)
    r.add_get("/v1/files", files.list_files)
    r.add_get("/v1/files/{id}", files.get_file)
    r.add_get("/v1/files/{id}/content", files.file_content)
    r.add_delete("/v1/files/{id}", files.delete_file)
    r.add_post("/v1/batches", batch_api.create)
    r.add_get("/v1/batches", batch_api.list_batches)
    r.add_get("/v1/batches/{id}", batch_api.retrieve)
    r.add_post("/v1/batches/{id}/cancel", batch_api.cancel)
    r.add_post("/api/webhooks", webhooks.create_endpoint)
    r.add_get("/api/webhooks", webhooks.list_endpoints)
    r.add_post("/api/webhook-secret/rotate", webhooks.rotate_secret)
    r.add_delete("/api/webhooks/{id}", webhooks.delete_endpoint)
    r.add_post("/api/webhooks/{id}/test", webhooks.send_test)
    r.add_get("/api/webhooks/{id}/deliveries", webhooks.list_deliveries)
