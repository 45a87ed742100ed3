# canaryproxy container image.
#
# Build (from the checkout):
#   docker build -t canaryproxy:0.1.0 .
#
# Run: the config file is mounted at /etc/canaryproxy/canaryproxy.yaml (it is not baked
# in: your backends are yours); secrets come from the environment and are referenced in
# the config as ${CANARYPROXY_ADMIN_TOKEN} and ${CANARYPROXY_COOKIE_SECRET} (see
# config/reference.yaml); runtime state (weights, ejections) lives in the volume
# /var/lib/canaryproxy, so set `state.path: /var/lib/canaryproxy/canaryproxy.db` (a
# relative path lands there too: it is the working directory).
#   docker run --rm -p 8080:8080 -p 9901:9901 \
#     -v "$PWD/canaryproxy.yaml:/etc/canaryproxy/canaryproxy.yaml:ro" \
#     -v canaryproxy-state:/var/lib/canaryproxy \
#     -e CANARYPROXY_ADMIN_TOKEN -e CANARYPROXY_COOKIE_SECRET \
#     --stop-timeout 40 canaryproxy:0.1.0
#
# In a container the admin listener must bind 0.0.0.0:9901 (admin.listen) for the
# published port and Prometheus to reach it; the health check below runs inside the
# container and reaches it on 127.0.0.1 either way. If you move the admin port, set
# CANARYPROXY_HEALTHCHECK_URL to match.
#
# Stop: SIGTERM drains in-flight requests for up to limits.drain_timeout (30s by default)
# before exit 0; Docker's default 10 s stop timeout would cut that short, hence
# --stop-timeout. SIGHUP (docker kill -s HUP) reloads the mounted config.
#
# Validate a config without starting anything:
#   docker run --rm -v "$PWD/canaryproxy.yaml:/etc/canaryproxy/canaryproxy.yaml:ro" \
#     -e CANARYPROXY_ADMIN_TOKEN -e CANARYPROXY_COOKIE_SECRET \
#     canaryproxy:0.1.0 canaryproxy check --config /etc/canaryproxy/canaryproxy.yaml

# Stage 1: build the wheel. The request path is compiled to C by mypyc (setup.py), which
# needs a C compiler; the compiler stays in this stage. Every package installed in either
# stage is the version and hash in uv.lock: uv (pinned with its hashes in uv-bootstrap.txt)
# exports the lock as hashed requirements, and pip installs them with --require-hashes.
FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY uv-bootstrap.txt uv.lock pyproject.toml setup.py README.md ./
COPY canaryproxy ./canaryproxy
RUN pip install --no-cache-dir --require-hashes --no-deps -r uv-bootstrap.txt \
    && mkdir /wheels \
    && uv export --quiet --frozen --no-emit-project -o /wheels/requirements.txt \
    && uv export --quiet --frozen --no-emit-project --extra build -o /tmp/build.txt \
    && pip install --no-cache-dir --require-hashes --no-deps -r /tmp/build.txt \
    && pip wheel --no-cache-dir --no-build-isolation --no-deps --wheel-dir /wheels .

# Stage 2: the image that runs.
FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="canaryproxy" \
      org.opencontainers.image.description="Reverse proxy for safe canary releases" \
      org.opencontainers.image.licenses="Apache-2.0"

# Logs are JSON lines on stdout/stderr: unbuffered so `docker logs` sees them at once.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CANARYPROXY_HEALTHCHECK_URL=http://127.0.0.1:9901/healthz

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it and a volume can be
# chowned to it from outside (config/k8s/ uses the same numbers).
RUN groupadd --system --gid 10001 canaryproxy \
    && useradd --system --uid 10001 --gid canaryproxy --no-create-home \
       --home-dir /var/lib/canaryproxy --shell /usr/sbin/nologin canaryproxy \
    && mkdir -p /etc/canaryproxy /var/lib/canaryproxy \
    && chown canaryproxy:canaryproxy /var/lib/canaryproxy

# Only the wheel built above and the locked runtime requirements (.dockerignore keeps the
# rest out of the build context).
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --require-hashes --no-deps -r /wheels/requirements.txt \
    && pip install --no-cache-dir --no-deps /wheels/*.whl \
    && rm -rf /wheels

WORKDIR /var/lib/canaryproxy
VOLUME ["/var/lib/canaryproxy"]

USER 10001:10001

# 8080: the proxy (listen); 9901: the admin API, /healthz and /metrics (admin.listen).
EXPOSE 8080 9901

# slim has no curl: the interpreter does the probe. Any error or non-2xx exits non-zero.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['CANARYPROXY_HEALTHCHECK_URL'], timeout=2)"]

STOPSIGNAL SIGTERM

CMD ["canaryproxy", "run", "--config", "/etc/canaryproxy/canaryproxy.yaml"]
