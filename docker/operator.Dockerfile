# syntax=docker/dockerfile:1
# The Diffusion Operator: `dtj operator` (kopf) with only the operator extra installed.
# Build from the repository root: docker build -f docker/operator.Dockerfile -t operator:dev .
ARG PYTHON_IMAGE=python:3.11.14-slim-trixie
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${PYTHON_IMAGE} AS deps
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
# uv's download cache is a build cache mount: kept between builds, never in a layer.
# Dependencies first, exactly as locked, so that source edits reuse this layer.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv uv sync --frozen --no-dev --extra operator --no-install-project

FROM deps AS build
COPY README.md ./
COPY operator ./operator
COPY trainer ./trainer
# The project alone, from its wheel and without dependencies, installed under /project (its
# packages with their bytecode, metadata and entry points) for a small layer of its own.
RUN --mount=type=cache,target=/root/.cache/uv uv build --wheel --out-dir /dist && \
    uv pip install --python /opt/venv/bin/python --prefix /project/opt/venv --no-deps /dist/*.whl

# The image is the deps stage (its venv layer shared with the build cache) plus the project.
FROM deps
LABEL org.opencontainers.image.title="diffusion-operator" \
      org.opencontainers.image.description="Kubernetes operator for DiffusionTrainingJob" \
      org.opencontainers.image.licenses="Apache-2.0"
# The locked dependencies are the deps stage's layer, which a source edit leaves as it is.
COPY --from=build /project/ /
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# Numeric, so that Kubernetes can verify runAsNonRoot without /etc/passwd.
WORKDIR /tmp
USER 1000:1000
# Liveness (/healthz) and Prometheus metrics.
EXPOSE 8080 8000
ENTRYPOINT ["dtj", "operator"]
