# syntax=docker/dockerfile:1
# A GPU worker: Celery + the CUDA build of torch on an NVIDIA CUDA runtime base.
# One container per GPU; it runs one job at a time (concurrency 1, prefetch 1).
#   docker build -f docker/worker.Dockerfile -t riir-worker .
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

# The torch wheel built for this CUDA line (see https://pytorch.org/get-started/locally/).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    RIIR_STORAGE_DIR=/data RIIR_MODELS_DIR=/app/weights RIIR_DEVICE=auto

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

# torch first, from the CUDA index, so installing the project keeps it (torch>=2.4 is met).
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY conventions ./conventions
COPY model ./model
COPY worker ./worker
COPY jobs ./jobs
COPY service ./service
COPY riir ./riir
RUN pip install . && cp -r model/weights ./weights

RUN useradd --uid 10001 --create-home riir && mkdir -p /data && chown riir:riir /data
USER riir
VOLUME ["/data"]

HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
  CMD celery -A worker.celery_app inspect ping --destination "worker@$HOSTNAME" --timeout 10 || exit 1

# SIGQUIT: a cold shutdown that requeues a running job (acks_late) after the soft-shutdown
# grace, instead of a warm shutdown that waits for a long job past the stop timeout.
STOPSIGNAL SIGQUIT
CMD ["celery", "-A", "worker.celery_app", "worker", "--concurrency", "1", \
     "--hostname", "worker@%h", "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
