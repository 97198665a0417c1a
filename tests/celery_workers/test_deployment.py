"""The deployment files: the merged Compose configuration, and the worker image."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import service_missing

ROOT = Path(__file__).resolve().parents[2]

#: The services and volumes of boinc-server-docker's docker-compose.yml (its b2d
#: variant), as the reference describes them; the override must merge with them.
BASE = """
version: "3.4"
services:
  mysql:
    image: boinc/server_mysql:latest
    volumes:
      - "mysql:/var/lib/mysql"
    environment:
      - MYSQL_ROOT_PASSWORD
  makeproject:
    image: boinc/server_makeproject:latest-b2d
    volumes:
      - "project:$PROJECT_ROOT.dst"
      - "secrets:/run/secrets"
    environment:
      - URL_BASE
      - PROJECT
  apache:
    image: boinc/server_apache:latest-b2d
    hostname: $PROJECT
    depends_on:
      - mysql
    volumes:
      - "project:$PROJECT_ROOT"
      - "results:/results"
      - "secrets:/run/secrets"
      - "/var/run/docker.sock:/var/run/docker.sock"
    ports:
      - "80:80"
    environment:
      - URL_BASE
      - PROJECT
volumes:
  mysql:
  project:
  results:
  secrets:
"""

ENV = "URL_BASE=http://127.0.0.1\nPROJECT=boincserver\nPROJECT_ROOT=/home/boincadm/project\n"


def _compose() -> list[str]:
    exe = shutil.which("docker-compose")
    if exe is None:
        service_missing("docker-compose", "install the Debian package docker-compose (v1.29)")
    return [str(exe)]


def _merged(tmp: Path, **env: str) -> dict[str, Any]:
    (tmp / "docker-compose.yml").write_text(BASE)
    shutil.copy(ROOT / "docker-compose.override.yml", tmp / "docker-compose.override.yml")
    env.setdefault("BOINC_PIPELINE_SRC", str(ROOT))  # a checkout of this repository
    (tmp / ".env").write_text(ENV + "".join(f"{k}={v}\n" for k, v in env.items()))
    done = subprocess.run(
        [*_compose(), "config"], cwd=tmp, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)  # type: ignore[no-any-return]


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """{target: (source, mode)} of a service's volumes, as ``docker-compose config`` prints them."""
    out = {}
    for entry in service.get("volumes", []):
        source, target, mode = entry.rsplit(":", 2)
        out[target] = (source, mode)
    return out


def test_override_merges_with_boinc_server_docker(tmp_path: Path) -> None:
    merged = _merged(tmp_path)
    services = merged["services"]
    assert set(services) == {"mysql", "makeproject", "apache", "redis", "worker", "beat", "flower"}
    assert set(merged["volumes"]) == {"mysql", "project", "results", "secrets", "pipeline"}
    # The database: published on the loopback address only, the base's settings kept.
    assert services["mysql"]["ports"] == ["127.0.0.1:3306:3306/tcp"]
    assert services["mysql"]["image"] == "boinc/server_mysql:latest"
    assert _mounts(services["mysql"]) == {"/var/lib/mysql": ("mysql", "rw")}
    worker = services["worker"]
    mounts = _mounts(worker)
    assert mounts["/results"] == ("results", "rw")
    assert mounts["/var/run/docker.sock"] == ("/var/run/docker.sock", "rw")
    assert mounts["/run/secrets"] == ("secrets", "ro")
    assert mounts["/var/lib/boinc-pipeline"] == ("pipeline", "rw")
    assert worker["environment"]["BOINC_PIPELINE_BROKER"] == "redis://redis:6379/0"
    assert worker["command"][:4] == ["celery", "-A", "workers.app", "worker"]
    assert worker["build"]["context"] == str(ROOT)
    assert {"redis", "mysql"} <= set(worker["depends_on"])
    assert worker["restart"] == "unless-stopped"
    beat = services["beat"]
    assert beat["command"][3] == "beat"
    assert beat["deploy"]["replicas"] == 1
    assert set(_mounts(beat)) == {"/var/lib/boinc-pipeline"}
    assert services["flower"]["volumes"] == []
    assert services["flower"]["ports"] == ["127.0.0.1:5555:5555/tcp"]
    assert services["redis"]["command"] == ["redis-server", "--save", "", "--appendonly", "no"]
    # The base's own services are untouched.
    assert _mounts(services["apache"])["/results"] == ("results", "rw")


def test_override_settings_come_from_the_environment(tmp_path: Path) -> None:
    merged = _merged(
        tmp_path,
        BOINC_PIPELINE_STATE="postgresql+psycopg://pipeline@db.internal/pipeline",
        BOINC_DB_PORT="13306",
        BOINC_PIPELINE_CONCURRENCY="8",
    )
    worker = merged["services"]["worker"]
    assert worker["environment"]["BOINC_PIPELINE_STATE"].startswith("postgresql+psycopg://")
    assert worker["command"][-1] == "8"
    assert merged["services"]["mysql"]["ports"] == ["127.0.0.1:13306:3306/tcp"]


PYTHON_BASE = "boinc-pipeline-test/python-base:bookworm"


@pytest.mark.slow
def test_worker_image_builds_and_loads_the_tasks(docker_client: Any) -> None:
    """Build the Dockerfile on a locally imported Debian base and import the tasks in it."""
    import docker.errors

    try:
        docker_client.images.get(PYTHON_BASE)
    except docker.errors.ImageNotFound:
        service_missing(
            "python-base-image",
            f"no local image {PYTHON_BASE}; tests/celery_workers/python_base.sh makes one",
        )
    tag = "boinc-pipeline-test/workers:latest"
    build = subprocess.run(
        ["docker", "build", "--network", "host", "--build-arg", f"BASE={PYTHON_BASE}",
         "-t", tag, str(ROOT)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    out = docker_client.containers.run(
        tag,
        [
            "python",
            "-c",
            "import workers.tasks as t; print(sorted(t.TASKS), t.app.conf.task_acks_late)",
        ],
        network_mode="none",
        remove=True,
    )
    assert out.decode().strip() == "['harvest', 'poll', 'top_up'] True"
    version = docker_client.containers.run(
        tag, ["celery", "-A", "workers.app", "report"], network_mode="none", remove=True
    )
    assert b"broker_url" in version
