# syntax=docker/dockerfile:1
# promptmill worker image: `docker build -t promptmill .`, then e.g.
#   docker run promptmill worker --processor moderation
# The build stage installs promptmill (without the local-model extra) into a venv; the
# runtime stage copies only that venv and runs as an unprivileged user (uid 10001, which
# the Helm chart's securityContext expects) on a read-only root filesystem.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/promptmill
WORKDIR /src
COPY pyproject.toml README.md ./
COPY promptmill ./promptmill
COPY schemas ./schemas
COPY topics ./topics
COPY producers ./producers
COPY processors ./processors
# A regular (not editable) install, byte-compiled by pip: the runtime cannot write .pyc
# files. Every dependency ships binary wheels for CPython 3.11, so no compiler is needed.
RUN /opt/promptmill/bin/pip install '.[s3]' \
    && /opt/promptmill/bin/promptmill --help >/dev/null

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/promptmill/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    PROMPTMILL_STATE_DIR=/tmp/promptmill/state \
    PROMPTMILL_CACHE_DIR=/tmp/promptmill/cache \
    PROMPTMILL_METRICS_HOST=0.0.0.0 \
    PROMPTMILL_METRICS_PORT=9464
RUN groupadd --system --gid 10001 promptmill \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin promptmill
COPY --from=build /opt/promptmill /opt/promptmill
# An empty working directory: settings are also read from ./.env, and there is none here.
WORKDIR /app
USER 10001:10001
# /metrics, /healthz and /readyz of the worker.
EXPOSE 9464
ENTRYPOINT ["promptmill"]
CMD ["worker", "--processor", "prompts"]
