# Agnes Home: one process serving /home, the API and the ingest worker; data on the /data volume.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY service ./service
# Editable: the service finds schema/, templates/ and static/ beside its package in /app.
RUN /opt/venv/bin/pip install --no-cache-dir -e .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AGNES_HOST=0.0.0.0 \
    AGNES_PORT=8080 \
    AGNES_DB_PATH=/data/agnes.db \
    AGNES_DATA_DIR=/data/files \
    AGNES_LOG_FORMAT=json \
    AGNES_SHUTDOWN_TIMEOUT=4
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home agnes \
    && mkdir -p /data \
    && chown agnes:agnes /data
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
COPY schema ./schema
COPY templates ./templates
COPY static ./static
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8080
# agnes-home serve stops accepting on SIGTERM, finishes in-flight work within
# AGNES_SHUTDOWN_TIMEOUT, rolls back any half-written file and closes the database.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('AGNES_PORT', '8080'), timeout=3)"]
ENTRYPOINT ["agnes-home"]
CMD ["serve"]
