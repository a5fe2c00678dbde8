# syntax=docker/dockerfile:1
# The gateway: FastAPI + uvicorn on a slim Python. No torch, no CUDA: it starts in a second.
#   docker build -f docker/gateway.Dockerfile -t riir-gateway .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    RIIR_STORAGE_DIR=/data RIIR_MODELS_DIR=/app/weights

WORKDIR /app
COPY docker/gateway.requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

# Source only: conventions/ (header checks, catalog, options), jobs/ (the job plane) and
# service/. The model cards and checkpoints are copied so GET /models and the model check see
# what the workers run.
COPY conventions ./conventions
COPY jobs ./jobs
COPY service ./service
COPY model/weights ./weights

# Same uid in the worker image: both write the shared storage volume.
RUN useradd --uid 10001 --create-home riir && mkdir -p /data && chown riir:riir /data
USER riir
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=3)"]

CMD ["uvicorn", "service.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", \
     "--proxy-headers", "--forwarded-allow-ips", "*", "--timeout-graceful-shutdown", "10"]
