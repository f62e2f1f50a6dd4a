# TicketGuard service image (API, supervisor, Ray head and Ray workers all run it).
# CPU (default):  docker build -t ticketguard .
# with Ray + S3:  docker build -t ticketguard --build-arg EXTRAS=ray,s3 .
# CUDA:           docker build -t ticketguard:cuda --build-arg EXTRAS=ray,s3 \
#                   --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#                   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#                 (an Ubuntu 24.04 base brings Python 3.12; the index must carry TORCH_VERSION: docs/DEPLOY.md)
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ARG EXTRAS=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TICKETGUARD_DATA_DIR=/data \
    PATH=/opt/venv/bin:$PATH

WORKDIR /app

# A virtual environment on any base: a python image has Python; a CUDA (Ubuntu) image gets it from apt.
RUN if ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; fi \
    && python3 -c "import sys; assert sys.version_info >= (3, 11), 'TicketGuard needs Python 3.11+'" \
    && python3 -m venv /opt/venv

# torch first, from the chosen index, so the package install does not pull another build.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md alembic.ini ./
COPY service ./service
COPY verifier ./verifier
COPY migrations ./migrations
RUN pip install ".${EXTRAS:+[$EXTRAS]}" \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin ticketguard \
    && mkdir -p /data && chown ticketguard:ticketguard /data

USER ticketguard
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

CMD ["ticketguard", "serve", "--host", "0.0.0.0", "--port", "8000"]
