# TicketGuard service image.
# CPU (default):  docker build -t ticketguard .
# CUDA:           docker build -t ticketguard:cuda \
#                   --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#                   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
#                 (the CUDA base needs python3.11+ and pip; see docs/ARCHITECTURE.md)
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TICKETGUARD_DATA_DIR=/data

WORKDIR /app

# torch first, from the chosen index, so the package install does not pull another build.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md alembic.ini ./
COPY service ./service
COPY verifier ./verifier
COPY migrations ./migrations
RUN pip install . \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin ticketguard \
    && mkdir -p /data && chown ticketguard:ticketguard /data

USER ticketguard
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

CMD ["ticketguard", "serve", "--host", "0.0.0.0", "--port", "8000"]
