# The Sluice image; the command picks the service:
#   python -m services.edge | services.coordinator | services.processor
# Targets:
#   production (the default, the last stage)  every service but the mock provider
#   mock       the same plus services/mockai, started by default; docker-compose.yml builds
#              the mockai service from it (`docker build --target mock -t sluice-mock .`)
# The mock is a test double: production images carry none of its code.

# --- builder: the run-time dependencies in a virtualenv ---------------------------------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /build
# Only the lock file first: this layer is rebuilt when the dependencies change, not on every
# code change. requirements.lock pins every run-time package with its hashes (`make lock`
# makes it from pyproject.toml's [project].dependencies, never the dev extras); pip refuses
# any file whose hash it does not list.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

# --- source: the code, less what production must not carry ------------------------------------
# COPY has no exclude: the mock is removed here, in a stage of its own, so that no layer of
# the production image ever held it.
FROM python:3.11-slim AS source
WORKDIR /src
COPY services ./services
RUN rm -rf services/mockai

# --- runtime: what both targets share ---------------------------------------------------------
FROM python:3.11-slim AS runtime

# The code runs from /app on PYTHONPATH rather than as an installed package: shared/lua/*.lua
# and migrations/*.sql are read from beside the code (shared/scripts.py, shared/store.py).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    LOG_FORMAT=json \
    STORE_PATH=/data/sluice.db

# A fixed uid, so a bind-mounted /data can be chowned to it on the host. /data belongs to it:
# a fresh named volume mounted there copies that ownership, and the SQLite file (shared by the
# edge and the processors) is writable without root.
RUN groupadd --system --gid 10001 sluice \
 && useradd --system --uid 10001 --gid sluice --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin sluice \
 && mkdir -p /data \
 && chown sluice:sluice /data

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY migrations ./migrations
COPY shared ./shared
COPY --from=source /src/services ./services
# Bytecode compiled now: the code is root-owned and read-only to the service user.
RUN python -m compileall -q /app

USER sluice
EXPOSE 8080
CMD ["python", "-m", "services.edge"]

# --- mock: the runtime plus the mock provider ---------------------------------------------------
FROM runtime AS mock
USER root
COPY services/mockai ./services/mockai
RUN python -m compileall -q /app/services/mockai
USER sluice
EXPOSE 8090
CMD ["python", "-m", "services.mockai"]

# --- production: the default target -------------------------------------------------------------
FROM runtime AS production
