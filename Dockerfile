# syntax=docker/dockerfile:1
# incident-sla-sidecar: slim Python, non-root numeric user, read-only root filesystem friendly
# (state lives on the /var/lib/incident-sla-sidecar volume, nothing else is written).
#   docker build -t incident-sla-sidecar .
#   docker run -v $PWD/config.yaml:/etc/incident-sla-sidecar/config.yaml:ro \
#     -v sidecar-data:/var/lib/incident-sla-sidecar -p 9095:9095 --read-only incident-sla-sidecar
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# The locked, hash-checked dependencies first (scripts/lock writes them), then the project alone
# with the locked build backend: what the image holds does not move with PyPI's latest releases.
COPY requirements/build.txt requirements/run.txt ./requirements/
COPY pyproject.toml README.md ./
COPY sidecar/ ./sidecar/
RUN pip install --no-cache-dir --require-hashes -r requirements/build.txt -r requirements/run.txt \
    && pip install --no-cache-dir --no-deps --no-build-isolation .

# Built-in severity presets: rules.file: /etc/incident-sla-sidecar/rules/<preset>.yaml
COPY rules/ /etc/incident-sla-sidecar/rules/

RUN groupadd --system --gid 10001 sidecar \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/incident-sla-sidecar \
       --no-create-home --shell /usr/sbin/nologin sidecar \
    && mkdir -p /var/lib/incident-sla-sidecar \
    && chown 10001:10001 /var/lib/incident-sla-sidecar

VOLUME ["/var/lib/incident-sla-sidecar"]
WORKDIR /var/lib/incident-sla-sidecar
USER 10001:10001
EXPOSE 9095

# No curl in slim images: Python's urllib checks liveness on the default port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9095/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["incident-sla-sidecar"]
CMD ["serve", "--config", "/etc/incident-sla-sidecar/config.yaml"]
