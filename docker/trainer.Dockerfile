# syntax=docker/dockerfile:1
# The trainer: torchrun + diffusion_trainer with the trainer extra, exactly as uv.lock pins it
# (torch and its CUDA 13 libraries come from the lock, the base only brings the CUDA userland).
# Build from the repository root: docker build -f docker/trainer.Dockerfile -t trainer:dev .
# No model weights are baked in: jobs read them from object storage or a volume at run time.
# CUDA 13.0 needs NVIDIA driver 580.65.06 or newer on the GPU nodes.
ARG CUDA_BASE_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9
ARG PYTHON_VERSION=3.11.14
# managed: uv installs CPython into /opt/python (the default); system: the base image's own
# python3 (local builds from Debian bases, where uv cannot download Python).
ARG PYTHON_SOURCE=managed

FROM ${UV_IMAGE} AS uv

FROM ${CUDA_BASE_IMAGE} AS deps
ARG PYTHON_VERSION
ARG PYTHON_SOURCE
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-${PYTHON_SOURCE} \
    UV_PYTHON=${PYTHON_VERSION} \
    UV_PROJECT_ENVIRONMENT=/opt/venv
RUN mkdir -p /opt/python && \
    if [ "${PYTHON_SOURCE}" = managed ]; then uv python install "${PYTHON_VERSION}"; fi
WORKDIR /src
# uv's download cache is a build cache mount: kept between builds, never in a layer.
# Dependencies first (the large layer), so that source edits reuse it.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv uv sync --frozen --no-dev --extra trainer --extra cloud --no-install-project

FROM deps AS build
COPY README.md ./
COPY operator ./operator
COPY trainer ./trainer
# The project alone, from its wheel and without dependencies, installed under /project (its
# packages with their bytecode, metadata and entry points) for a small layer of its own.
RUN --mount=type=cache,target=/root/.cache/uv uv build --wheel --out-dir /dist && \
    uv pip install --python /opt/venv/bin/python --prefix /project/opt/venv --no-deps /dist/*.whl

# The image is the deps stage (its venv layer shared with the build cache, not copied: 6.7 GB
# less to write and store) plus the project's files.
FROM deps
LABEL org.opencontainers.image.title="diffusion-trainer" \
      org.opencontainers.image.description="FSDP2 Stable Diffusion trainer run by DiffusionTrainingJob workers" \
      org.opencontainers.image.licenses="Apache-2.0"
# The locked dependencies (gigabytes) are the deps stage's layer, which a source edit leaves as
# it is; the project goes on top, without dependencies.
COPY --from=build /project/ /
# Every cache lives under /tmp, a writable volume (an emptyDir in worker pods), so the image works
# with a read-only root filesystem and never downloads into its own layers.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    TRITON_CACHE_DIR=/tmp/triton
VOLUME ["/tmp"]
WORKDIR /tmp
# The uid worker pods run as (runAsUser 1000).
USER 1000:1000
# torchrun rendezvous and trainer metrics.
EXPOSE 29500 9400
# Exec form: torchrun is PID 1 and gets SIGTERM, which it forwards to the trainer processes
# (they write an emergency checkpoint). Worker pods pass the same command with their own args.
ENTRYPOINT ["torchrun"]
CMD ["--standalone", "--nproc-per-node=1", "-m", "diffusion_trainer", "--config", "/etc/dtj/config.yaml"]
