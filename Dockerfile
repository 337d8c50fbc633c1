# mps-snapshot: the same install steps as scripts/setup.sh (Debian ffmpeg + the Python
# package), on a slim Debian 12 Python image, running as a non-root user.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY client ./client
RUN python -m venv /opt/mps && /opt/mps/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/mps/bin/pip install --no-cache-dir .

FROM python:3.11-slim-bookworm
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/mps mps \
    && mkdir -p /data && chown mps /data
COPY --from=build /opt/mps /opt/mps
# 0.0.0.0 is safe here: with no [[principals]] configured, the server creates an access key
# in /data/access-key.json on first start (mode 0600) and admits only callers that sign
# with it; the CLI inside the container reads the same file (docker exec ... mps-snapshot).
# HTTP on 8080: MPS's HTTP RPC (Alibaba Cloud SDKs, signed with that key), the console (asks for
# the key) and /metrics (Prometheus, unauthenticated: publish 8080 only where that is fine).
ENV PATH=/opt/mps/bin:$PATH \
    MPS_SNAPSHOT_DATA_DIR=/data \
    MPS_SNAPSHOT_LISTEN=0.0.0.0:50051 \
    MPS_SNAPSHOT_HTTP_LISTEN=0.0.0.0:8080 \
    MPS_SNAPSHOT_BOOTSTRAP_KEY_FILE=/data/access-key.json \
    MPS_SNAPSHOT_ACCESS_KEY_FILE=/data/access-key.json \
    MPS_SNAPSHOT_TARGET=127.0.0.1:50051
USER mps
VOLUME ["/data"]
EXPOSE 50051 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 CMD ["mps-snapshot", "health"]
STOPSIGNAL SIGTERM
CMD ["mps-snapshot", "serve"]
