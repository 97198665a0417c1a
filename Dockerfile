# The boinc-pipeline image: Celery workers, beat and Flower (see docs/deployment.md).
#
#   docker build -t boinc-pipeline .
#   docker build --build-arg BASE=my-python-base --network host -t boinc-pipeline .
#
# BASE is any Debian-like image with python3 (3.11+) and its venv module:
# python:3.11-slim-bookworm by default, or a base imported with `docker import`
# where no registry is reachable (tests/celery_workers/python_base.sh makes one).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/boinc-pipeline \
    PATH=/opt/boinc-pipeline/bin:$PATH \
    BOINC_PIPELINE_SERVERS=/etc/boinc-pipeline/servers \
    BOINC_PIPELINE_STATE=sqlite:////var/lib/boinc-pipeline/state.sqlite \
    BOINC_PIPELINE_STORE=/var/lib/boinc-pipeline/store

RUN python3 -m venv "$VIRTUAL_ENV" \
 && mkdir -p /etc/boinc-pipeline/servers /var/lib/boinc-pipeline

WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY workers ./workers
RUN pip install --no-cache-dir ".[all,flower]" \
 && python -c "import workers.tasks, pipeline.cli" \
 && celery --version

WORKDIR /var/lib/boinc-pipeline
# The workers talk to the Docker engine through its socket (docker:// transport),
# which is root-equivalent on the host anyway; see docs/deployment.md.
CMD ["celery", "-A", "workers.app", "worker", "--loglevel", "INFO"]
