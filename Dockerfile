# modelgate: one serving process per core of the container (--workers auto); scale out with
# more containers (replicas, deploy/ for Kubernetes).
#
#   docker build -t modelgate .
#   docker run --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v "$PWD/modelstore:/models" modelgate
#
# The registry lives outside the image (a volume here, or `--registry http://...` /
# `mlflow+http://...`); the gateway follows its stage changes. The store must exist (an
# empty volume is refused, not served as an empty registry: register a model into it first,
# or pass `serve --create-store on`); `docker exec ... modelgate registry list` reads the same
# store, through MODELGATE_STORE. With a retraining webhook
# (`--retrain-webhook URL`, secret in MODELGATE_WEBHOOK_SECRET), undelivered events wait in
# /models/webhook-outbox.db, so the volume must be writable by uid 10001 (or pass
# `--webhook-outbox` on another volume).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY modelgate modelgate
COPY gateway gateway
COPY registry registry
COPY monitor monitor
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN useradd --create-home --uid 10001 modelgate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER modelgate
WORKDIR /home/modelgate
# Ports are set here, as variables, so that HEALTHCHECK follows them: change the HTTP port
# with `-e MODELGATE_HTTP_PORT=...`, not with --http-port, which the check cannot see.
# GRPC_VERBOSITY: without it grpcio logs a line for every failed TLS handshake, as many
# as anyone who can reach the port makes.
# MODELGATE_WORKERS=auto: one serving process per core the container may run on (its CPU
# affinity; `docker run --cpuset-cpus` sets it, a CPU quota does not: there, set a number).
ENV MODELGATE_HOST=0.0.0.0 \
    MODELGATE_STORE=/models \
    MODELGATE_WORKERS=auto \
    MODELGATE_HTTP_PORT=8000 \
    MODELGATE_GRPC_PORT=8001 \
    MODELGATE_METRICS_PORT=8002 \
    PYTHONUNBUFFERED=1 \
    GRPC_VERBOSITY=ERROR
EXPOSE 8000 8001 8002
# SIGTERM drains: readiness turns 503, in-flight requests finish, then the process exits.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=2s --start-period=30s \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ['MODELGATE_HTTP_PORT'], timeout=1)"
ENTRYPOINT ["modelgate"]
CMD ["serve"]
