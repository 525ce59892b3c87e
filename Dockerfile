# syntax=docker/dockerfile:1
# The gateway as a container: `docker build -t gateway .` then `docker run -p 8080:8080 gateway`.
# compose.yaml builds this same image for its `migrate` (one-shot) and `gateway` services.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed, unprivileged user; /data (DATA_DIR) is its only writable place.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /data --no-create-home --shell /usr/sbin/nologin gateway \
    && mkdir -p /data \
    && chown gateway:gateway /data

WORKDIR /src
COPY . .
# A regular (non-editable) install: the migrations ship inside the package as gateway.migrations.
RUN pip install --no-cache-dir . \
    && rm -rf /src

# Run from /data so that an optional .env mounted there is read, and nothing is written elsewhere.
WORKDIR /data
ENV DATA_DIR=/data
VOLUME ["/data"]
USER gateway:gateway

EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4).status == 200 else 1)"]

CMD ["gateway", "serve", "--host", "0.0.0.0", "--port", "8080"]
