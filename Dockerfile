# One image for every GigaAM process: compose.yaml runs it as nats, registry, decode, infer, format,
# api and ingest (`serve NAME`). Alone, `docker run --gpus all -p 8000:8000 IMAGE` runs the whole stack
# with an embedded broker (`up`).
#
# Model weights are not baked in: they live in the GIGAAM_MODEL_DIR volume (/models). The infer
# service downloads GIGAAM_MODEL there on its first start, or fetch one explicitly:
#   docker compose run --rm infer models pull e2e_rnnt
#
# torch comes from the default package index as on any Linux host: its wheels bundle the CUDA
# runtime, so the host needs only the NVIDIA driver and the NVIDIA Container Toolkit.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# Dependencies in their own layer, at the exact versions the suite passed with (constraints.txt): torch
# and friends are gigabytes and change rarely, the source changes all the time. Empty packages stand
# in for ours, so this layer depends on pyproject.toml and constraints.txt only.
COPY pyproject.toml constraints.txt ./
RUN mkdir pipeline services schemas \
 && touch pipeline/__init__.py services/__init__.py schemas/__init__.py \
 && pip install -c constraints.txt . \
 && pip uninstall -y gigaam-transcriber \
 && rm -rf /src/*

# The project itself (not editable: the image needs no source tree at run time).
COPY pipeline ./pipeline
COPY services ./services
COPY schemas ./schemas
RUN pip install --no-deps . && cd / && rm -rf /src

# Stdlib + nats-py probe used by the compose healthchecks (see deploy/healthcheck.py).
COPY deploy/healthcheck.py /opt/gigaam/healthcheck.py

# Non-root. A fixed uid so bind-mounted folders can be prepared for it: chown 10001 DIR.
# The folders exist in the image so that new named volumes start out owned by that user.
RUN useradd --system --user-group --uid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin gigaam \
 && mkdir -p /data /models /srv/inbox/incoming /srv/output \
 && chown -R gigaam:gigaam /data /models /srv/inbox /srv/output

# Container defaults; compose.yaml sets the rest. Every GIGAAM_* is in docs/configuration.md.
ENV GIGAAM_DATA_DIR=/data \
    GIGAAM_MODEL_DIR=/models \
    GIGAAM_API_HOST=0.0.0.0 \
    HOME=/data

USER 10001:10001
WORKDIR /data
EXPOSE 8000
ENTRYPOINT ["gigaam-transcriber"]
CMD ["up"]
