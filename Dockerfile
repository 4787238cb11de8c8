# One image for every Sluice service; the command picks it:
#   python -m services.edge | services.coordinator | services.processor | services.mockai
# docker-compose.yml runs them all.

# --- builder: the runtime dependencies in a virtualenv --------------------------------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /build
# Only pyproject.toml first: this layer is rebuilt when the dependencies change, not on every
# code change. The list is [project].dependencies (never the dev extras), read with tomllib so
# it has a single source.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && pip install -r requirements.txt

# --- runtime ----------------------------------------------------------------------------------
FROM python:3.11-slim

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
COPY services ./services
# Bytecode compiled now: the code is root-owned and read-only to the service user.
RUN python -m compileall -q /app

USER sluice
EXPOSE 8080 8090
CMD ["python", "-m", "services.edge"]
