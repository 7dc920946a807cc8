# syntax=docker/dockerfile:1
# The Comptroller image: one image for every component (`comptroller webhook | operator | certs ...`),
# as the Helm chart runs it. Multi-stage: the first stage builds our wheel and installs it with its
# dependencies into a virtualenv; the final stage is python:slim plus that virtualenv, nothing else
# (no compiler, no pip cache, no sources), running as uid 65532 on a read-only root filesystem.
#
#   docker build -t ghcr.io/comptroller-dev/comptroller:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so editing the code does not refetch them.
COPY pyproject.toml README.md ./
RUN mkdir controller && touch controller/__init__.py \
 && pip wheel --wheel-dir /wheels . \
 && rm -rf /wheels/comptroller-*.whl build comptroller.egg-info controller
COPY controller ./controller
# Bytecode is compiled here, because the running container cannot write it (read-only root); pip
# and setuptools leave the runtime; the final `--help` imports every subcommand, so a broken import
# fails the build, not the rollout.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/comptroller \
 && /opt/comptroller/bin/pip install --no-index --find-links /wheels comptroller \
 && /opt/comptroller/bin/python -m compileall -q /opt/comptroller/lib \
 && /opt/comptroller/bin/python -m pip uninstall -q -y pip setuptools \
 && /opt/comptroller/bin/comptroller --help >/dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="comptroller" \
      org.opencontainers.image.description="FinOps admission controller and operator for ML workloads on Kubernetes" \
      org.opencontainers.image.source="https://github.com/comptroller-dev/comptroller" \
      org.opencontainers.image.licenses="Apache-2.0"
# A named non-root user with the uid/gid the chart's securityContext uses (distroless' "nonroot").
RUN groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin nonroot
COPY --from=build /opt/comptroller /opt/comptroller
# HOME and TMPDIR point at /tmp, the one writable path (an emptyDir in the chart); nothing else is
# written at run time.
ENV PATH=/opt/comptroller/bin:$PATH \
    HOME=/tmp \
    TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /tmp
EXPOSE 8443 8080 9090
ENTRYPOINT ["comptroller"]
CMD ["--help"]
