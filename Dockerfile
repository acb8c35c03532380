# syntax=docker/dockerfile:1
#
# kdserve images, two targets from one file (docs/deploy.md explains the split):
#   api     the REST API and `kdserve db upgrade`; no torch (the API never imports it)
#   worker  the Celery worker: CUDA torch and the `onnx` extra
#
#   docker build --target api    -t kdserve-api .
#   docker build --target worker -t kdserve-worker .
#
# Dependencies come from pyproject.toml (docker/requirements.py prints them) in a layer that
# only changes when pyproject.toml does; the code is copied after it.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- base: Python, the non-root user, the dependency list ----------------------------------
FROM ${PYTHON_IMAGE} AS base

# PYTHONPATH=/app: `store/` and `migrations/` (which the wheel does not package) import from
# the source tree, and alembic.ini sits beside them.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONPATH=/app \
    KDSERVE_HOME=/var/lib/kdserve

RUN groupadd --system --gid 10001 kdserve \
 && useradd --system --uid 10001 --gid kdserve --home-dir /var/lib/kdserve --create-home \
        --shell /usr/sbin/nologin kdserve

WORKDIR /app
COPY pyproject.toml docker/requirements.py /tmp/build/

# ---- api: FastAPI, SQLAlchemy, Celery client, boto3; no torch ------------------------------
FROM base AS api

# torch is a core dependency of the package (kdcore needs it) but the API never imports it:
# install every other requirement, then the project itself with --no-deps.
RUN python /tmp/build/requirements.py /tmp/build/pyproject.toml --exclude torch \
        > /tmp/build/requirements.txt \
 && pip install -r /tmp/build/requirements.txt

COPY pyproject.toml README.md alembic.ini ./
COPY kdcore/ kdcore/
COPY store/ store/
COPY api/ api/
COPY worker/ worker/
COPY cli/ cli/
COPY client/ client/
COPY migrations/ migrations/

# Fail the build if anything pulled torch in after all: the image is sized without it.
RUN pip install --no-deps -e . \
 && python -m compileall -q kdcore store api worker cli client migrations \
 && python -c "import importlib.util as u, sys; sys.exit('torch found' if u.find_spec('torch') else 0)"

USER 10001:10001
EXPOSE 8000
# KDSERVE_API_HOST defaults to 127.0.0.1; compose sets 0.0.0.0 so the port can be published.
CMD ["kdserve", "api"]

# ---- worker: CUDA torch + the onnx extra ----------------------------------------------------
FROM base AS worker

# torch from PyPI is, on Linux x86_64, a CUDA build that bundles its CUDA libraries as wheels
# (torch 2.13: CUDA 13.0, needs NVIDIA driver >= 580); the host only provides the driver via
# the NVIDIA Container Toolkit. For an older driver point TORCH_INDEX_URL at a PyTorch index
# such as https://download.pytorch.org/whl/cu128 that carries this version.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility

RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && python -c "import sys, torch; sys.exit(0 if torch.version.cuda else 'torch is a CPU build')"

# torch>=2.10 in this list is already satisfied, so pip keeps the CUDA build; checked again.
RUN python /tmp/build/requirements.py /tmp/build/pyproject.toml --extras onnx \
        > /tmp/build/requirements.txt \
 && pip install -r /tmp/build/requirements.txt \
 && python -c "import sys, torch; sys.exit(0 if torch.version.cuda else 'torch is a CPU build')"

COPY pyproject.toml README.md alembic.ini ./
COPY kdcore/ kdcore/
COPY store/ store/
COPY api/ api/
COPY worker/ worker/
COPY cli/ cli/
COPY client/ client/
COPY migrations/ migrations/

RUN pip install --no-deps -e . \
 && python -m compileall -q kdcore store api worker cli client migrations

# bubblewrap builds the job sandbox's namespaces (worker/sandbox). Without it, or where the
# container's seccomp profile forbids user namespaces, jobs still run in a plain child process
# and code checkpoints are refused (docs/deploy.md, "The job sandbox").
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap \
 && rm -rf /var/lib/apt/lists/*

USER 10001:10001
# One job at a time per GPU, a fresh child process per job (frees GPU memory, isolates the
# checkpoint loading). Compose passes the same flags; the beat scheduler runs in its own service.
CMD ["kdserve", "worker", "--queues", "gpu", "--concurrency", "1", "--max-tasks-per-child", "1"]
