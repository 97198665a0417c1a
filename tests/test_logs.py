"""Logs are structured and never carry a secret."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.logs import JsonFormatter, RedactingFilter, redact, register_secret


def test_redact_masks_url_passwords_pairs_and_registered_secrets() -> None:
    assert redact("mysql+pymysql://root:s3cr3t@db:3306/x") == "mysql+pymysql://root:***@db:3306/x"
    assert redact("DB_PASSWD=abc123 and token: xyz") == "DB_PASSWD=*** and token: ***"
    register_secret("correct-horse-battery")
    assert "correct-horse" not in redact("connect failed with correct-horse-battery in it")
    assert redact("nothing secret here") == "nothing secret here"


def test_json_lines_carry_extra_fields_redacted() -> None:
    record = logging.makeLogRecord(
        {
            "name": "pipeline.submit",
            "levelno": 20,
            "levelname": "INFO",
            "msg": "url %s",
            "args": ("ssh://u:pw@h/x",),
            "sweep": "grid",
            "n": 3,
        }
    )
    assert RedactingFilter().filter(record)
    doc = json.loads(JsonFormatter().format(record))
    assert doc["message"] == "url ssh://u:***@h/x"
    assert (doc["sweep"], doc["n"], doc["level"]) == ("grid", 3, "info")


def test_cli_never_prints_the_database_password(tmp_path: Path) -> None:
    secret = "pw-9f8e7d6c5b4a"
    server = tmp_path / "server.yaml"
    server.write_text(
        yaml.safe_dump(
            {
                "name": "s",
                "transport": f"local://{tmp_path}",
                "boinc_db": {
                    "url": "mysql+pymysql://root@127.0.0.1:1/boincserver",
                    "password_env": "BP_TEST_PW",
                },
            }
        )
    )
    spec = Path(__file__).resolve().parent.parent / "configs/examples/hello-world.yaml"
    env = {
        **os.environ,
        "BP_TEST_PW": secret,
        "BOINC_PIPELINE_STATE": f"sqlite:///{tmp_path}/s.sqlite",
    }
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "--log-level",
            "DEBUG",
            "--log-json",
            "submit",
            str(spec),
            "--server",
            str(server),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert res.returncode != 0
    assert "BOINC database unreachable" in res.stderr
    assert secret not in res.stderr + res.stdout
