# syntax=docker/dockerfile:1
# seqrec CPU image: Ray 2.60.0 (the manifests' rayVersion), CPU torch, faiss-cpu, seqrec from this repository.
#   docker build -t seqrec:0.1.0-cpu .
# The CUDA image is platform/deploy/Dockerfile.cuda. Both start from python:3.11-slim rather than rayproject/ray: the pins
# below (torch, ray, faiss) then decide every version, the image stays small, and the CUDA variant gets its
# CUDA runtime from pip wheels (torch, faiss-gpu-cu12) instead of a CUDA base image. See docs/cluster.md.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

# Versions: each must satisfy pyproject.toml (tests/test_deploy_image.py checks), and RAY_VERSION must equal
# the manifests' rayVersion (a Ray cluster's nodes and clients run one Ray version).
ARG TORCH_VERSION=2.13.0
ARG RAY_VERSION=2.60.0
ARG FAISS_CPU_VERSION=1.15.1

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# wget: KubeRay's default liveness/readiness probes call it inside the Ray containers.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --shell /bin/bash ray

# The heavy, rarely changing layer first: an unpinned torch would pull a multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}" \
    && pip install "ray[default,data,train,tune,serve]==${RAY_VERSION}" "faiss-cpu==${FAISS_CPU_VERSION}"

WORKDIR /opt/seqrec
COPY pyproject.toml README.md ./
COPY platform/seqrec ./platform/seqrec
COPY tune_spaces ./tune_spaces
COPY serve_apps ./serve_apps
# The pins above already satisfy seqrec's ranges, so pip keeps them and adds the rest (pyarrow, pandas, ...).
RUN pip install "torch==${TORCH_VERSION}" "ray==${RAY_VERSION}" . \
    && seqrec --help > /dev/null

# numeric, so Kubernetes' runAsNonRoot can check it: uid 1000 is the user `ray` made above
USER 1000:1000
WORKDIR /home/ray
CMD ["bash"]
