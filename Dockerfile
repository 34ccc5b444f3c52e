# qworker worker image.
#
#   docker build -t qworker .
#   docker run --rm -e QWORKER_QUEUE_NAME=orders -e AWS_REGION=eu-west-1 qworker handlers.orders
#
# The base is a build argument so that any Python >= 3.11 image with `python3 -m venv` works (the
# official slim image by default; scripts/container.sh passes a debootstrapped Debian base). Nothing
# here is architecture-specific: the same file builds linux/amd64 and linux/arm64 with buildx.
ARG BASE_IMAGE=python:3.11-slim

# ---- builder: the project and its dependencies in a self-contained venv -------------------------
FROM ${BASE_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ONLY_BINARY=:all: \
    PYTHONDONTWRITEBYTECODE=1

# python3 (not python): the official images and Debian's python3 package both provide it.
RUN python3 -m venv /opt/venv

WORKDIR /src
COPY pyproject.toml README.md ./
COPY qworker ./qworker
# Wheels only (PIP_ONLY_BINARY): no compiler needed and no source builds that differ per arch. The
# project itself is still built from this directory, by hatchling (pure Python, itself a wheel).
RUN /opt/venv/bin/pip install .

# ---- runtime ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}

ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN groupadd --gid 10001 qworker \
    && useradd --uid 10001 --gid qworker --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin qworker

COPY --from=builder /opt/venv /opt/venv
COPY handlers /app/handlers
WORKDIR /app

# Numeric, so that runtimes enforcing runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001

# qworker drains in-flight messages on SIGTERM (what ECS and `docker stop` send); stated explicitly.
# No HEALTHCHECK: ECS uses the task definition's, and OCI-format images drop it anyway.
STOPSIGNAL SIGTERM

# The handler module is the argument: `docker run qworker handlers.payments` runs another one.
ENTRYPOINT ["qworker", "run"]
CMD ["handlers.orders"]
