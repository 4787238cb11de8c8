"""Traces across services: with OTEL_EXPORTER_OTLP_ENDPOINT pointed at a small OTLP/HTTP
receiver started here, one task submitted with a client's traceparent yields spans from the
edge, the coordinator and the processor, in one trace, each the parent of the next."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from harness.processes import running_stack
from harness.waiting import wait_for
from tests.client import Api

CLIENT_TRACE, CLIENT_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"

# Observability is the services' and Redis's; the store does nothing of its own here.
pytestmark = pytest.mark.first_store_only


class Receiver:
    """OTLP/HTTP (protobuf) on /v1/traces; keeps every span with its service's name."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                req = ExportTraceServiceRequest.FromString(body)
                for rs in req.resource_spans:
                    attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        for s in ss.spans:
                            receiver.spans.append({
                                "service": attrs.get("service.name"), "name": s.name,
                                "trace": s.trace_id.hex(), "id": s.span_id.hex(),
                                "parent": s.parent_span_id.hex(), "kind": s.kind,
                                "attributes": {a.key: a.value for a in s.attributes}})
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()
                self.wfile.write(b"")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def test_one_task_is_one_trace_from_edge_to_processor(tmp_path: Path, redis_url: str,
                                                     receiver: Receiver) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100",
           "BATCH_TIMEOUT_MS": "50"}
    with running_stack(tmp_path, redis_url, env=env) as stack:
        api = Api(stack.edge_url)
        task_id = api.submit(
            {"model": "mock-r1", "messages": [{"role": "user", "content": "hi"}],
             "metadata": {"mock": {"content_tokens": 5, "reasoning_tokens": 2}}},
            headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
        assert api.wait_terminal(task_id)["status"] == "succeeded"

        def ours() -> dict[str, dict[str, Any]]:
            found = {s["service"]: s for s in receiver.spans if s["trace"] == CLIENT_TRACE}
            return found if len(found) == 3 else {}
        spans = wait_for(ours, 30, "spans from the edge, coordinator and processor")

    edge, coord, proc = (spans["sluice-edge"], spans["sluice-coordinator"],
                         spans["sluice-processor"])
    assert edge["parent"] == CLIENT_SPAN  # the client's traceparent header is honoured
    assert coord["parent"] == edge["id"]
    assert proc["parent"] == coord["id"]
    assert edge["name"] == "sluice.submit" and coord["name"] == "sluice.batch"
    # The provider call: a GenAI client span (kind 3 = CLIENT) with gen_ai.* attributes.
    assert proc["name"] == "chat mock-r1" and proc["kind"] == 3
    a = proc["attributes"]
    assert a["gen_ai.operation.name"].string_value == "chat"
    assert a["gen_ai.request.model"].string_value == "mock-r1"
    assert a["gen_ai.usage.output_tokens"].int_value == 7
    assert a["gen_ai.usage.input_tokens"].int_value > 0
    assert [v.string_value for v in a["gen_ai.response.finish_reasons"].array_value.values] == [
        "stop"]
    assert {s["trace"] for s in receiver.spans if s["service"] != "sluice-edge"
            or s["name"] == "sluice.submit"} == {CLIENT_TRACE}
