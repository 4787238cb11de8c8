"""Settings of the Batch API (files, batches, the batch runner), read with the edge's."""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import Env


@dataclass(frozen=True, slots=True)
class BatchApiSettings:
    max_file_bytes: int       # an uploaded file's size limit (OpenAI: 200 MB)
    max_file_lines: int       # requests in one input file (OpenAI: 50,000)
    completion_window_s: int  # what "24h" means; shorter only in tests of expiry
    lines_in_flight: int      # all batches' lines queued or running at once
    tenant_lines_in_flight: int  # one tenant's batch lines queued or running at once
    tick_s: float             # how often the runner looks at the active batches
    runner_lease_ms: int      # the runner's lease: one edge replica runs the batches
    uploads_per_edge: int     # uploads in progress at once on one edge replica
    uploads_per_tenant: int   # one tenant's uploads in progress at once on one edge replica
    upload_timeout_s: float   # an upload must have arrived whole within this (else 408)

    @classmethod
    def from_env(cls, env: Env) -> BatchApiSettings:
        in_flight = env.integer("BATCH_LINES_IN_FLIGHT", 16, min_value=1)
        per_edge = env.integer("BATCH_UPLOADS_PER_EDGE", 16, min_value=1)
        return cls(
            max_file_bytes=env.integer("BATCH_MAX_FILE_BYTES", 200 * 1024 * 1024, min_value=1),
            max_file_lines=env.integer("BATCH_MAX_FILE_LINES", 50_000, min_value=1),
            completion_window_s=env.integer("BATCH_COMPLETION_WINDOW_S", 86_400, min_value=1),
            lines_in_flight=in_flight,
            tenant_lines_in_flight=env.integer("BATCH_TENANT_LINES_IN_FLIGHT", in_flight,
                                               min_value=1),
            tick_s=env.number("BATCH_TICK_S", 0.5, min_value=0.01),
            runner_lease_ms=env.integer("BATCH_RUNNER_LEASE_MS", 10_000, min_value=100),
            uploads_per_edge=per_edge,
            uploads_per_tenant=env.integer("BATCH_UPLOADS_PER_TENANT", min(4, per_edge),
                                           min_value=1),
            upload_timeout_s=env.number("BATCH_UPLOAD_TIMEOUT_S", 900.0, min_value=0.01),
        )
