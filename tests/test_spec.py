"""Sweep spec and server config loading: defaults, hashing, YAML rules, and error reporting."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import DbConfig, ServerConfig, load_server_config
from pipeline.errors import ConfigError, SpecError
from pipeline.spec import SweepSpec, load_spec

ROOT = Path(__file__).resolve().parent.parent

BASE = "name: s\nimage: img\ncommand: [run, '{a}']\nparameters: {grid: {a: [1, 2]}}\n"


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_and_properties(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, BASE))
    assert (spec.version, spec.app) == (1, "boinc2docker")
    assert (spec.job.min_quorum, spec.job.target_nresults) == (1, 1)
    assert (
        spec.job.max_error_results,
        spec.job.max_total_results,
        spec.job.max_success_results,
    ) == (3, 10, 6)
    assert (spec.job.rsc_fpops_est, spec.job.rsc_fpops_bound) == (3600e9, 86400e9)
    assert (spec.job.rsc_memory_bound, spec.job.rsc_disk_bound, spec.job.delay_bound) == (
        500_000_000,
        1_000_000_000,
        604800,
    )
    assert spec.submit.max_attempts == 2
    assert spec.worst_case_runs == 20
    assert spec.size == 2
    assert spec.name_prefix == "s_v1_"


def test_string_command_is_split_like_a_shell_line(tmp_path: Path) -> None:
    spec = load_spec(
        write(tmp_path, BASE.replace("command: [run, '{a}']", "command: \"run --x='a b' {a}\""))
    )
    assert spec.command_args == ["run", "--x=a b", "{a}"]


def test_yaml_12_scalars(tmp_path: Path) -> None:
    text = (
        BASE.replace("[1, 2]", "[yes, no, on, 2e9, 1.5, 2024-01-01, 007, true]")
        + "job: {rsc_memory_bound: 2e9}\n"
    )
    spec = load_spec(write(tmp_path, text))
    assert spec.parameters.grid["a"] == ["yes", "no", "on", 2e9, 1.5, "2024-01-01", "007", True]
    assert spec.job.rsc_memory_bound == 2_000_000_000
    assert type(spec.job.rsc_memory_bound) is int


def test_workunit_hash_covers_only_the_workunit_part(tmp_path: Path) -> None:
    h = load_spec(write(tmp_path, BASE)).workunit_hash()
    assert len(h) == 64
    same = (
        BASE
        + "submit: {chunk_size: 5, schedule: {interval: 10m}}\n"
        + "outputs: [{file: a.csv, kind: csv}]\nversion: 3\n"
    )
    assert load_spec(write(tmp_path, same)).workunit_hash() == h
    for change in (
        "image: img2",
        "command: [run, '{a}', x]",
        "job: {priority: 3}",
        "params_file: true",
        "prerun: [x]",
    ):
        key = change.split(":")[0]
        lines = [ln for ln in BASE.splitlines() if not ln.startswith(key + ":")]
        changed = "\n".join([*lines, change]) + "\n"
        assert load_spec(write(tmp_path, changed)).workunit_hash() != h, change
    reordered = "parameters: {grid: {a: [1, 2]}}\ncommand: [run, '{a}']\nimage: img\nname: s\n"
    assert load_spec(write(tmp_path, reordered)).workunit_hash() == h


def test_all_problems_are_reported_with_file_path_value_and_allowed(tmp_path: Path) -> None:
    text = (
        "name: Bad_Name\nimage: img\nversion: 0\ncommand: [run, '{a}']\n"
        "parameters:\n  grid:\n    a: [1, .nan]\n"
        "job: {rsc_memory_bound: 2500000000.5, bogus: 1}\nsubmit: {mode: turbo}\n"
        "outputs:\n  - {file: ../x, kind: csv}\n  - {file: y, kind: regex}\n"
    )
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    problems = {p.location.split(" ")[0]: p for p in info.value.problems}
    assert set(problems) >= {
        "name",
        "version",
        "parameters.grid.a[1]",
        "job.rsc_memory_bound",
        "job.bogus",
        "submit.mode",
        "outputs[0].file",
        "outputs[1]",
    }
    assert problems["name"].value == "Bad_Name"
    assert "a-z0-9-" in problems["name"].message
    assert problems["name"].location == "name (line 1)"
    assert problems["parameters.grid.a[1]"].location.endswith("(line 7)")
    assert "allowed: rsc_fpops_est" in problems["job.bogus"].message
    assert "'script', 'batch' or 'fast'" in problems["submit.mode"].message
    assert "needs a pattern" in problems["outputs[1]"].message
    assert all(p.file == str(path) for p in info.value.problems)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "where", "match"),
    [
        ("name: s\nimage: [\n", "line", "YAML syntax error"),
        (BASE + "name: t\n", "name (line 5)", "duplicate key"),
        ("- a\n", "", "top level must be a mapping"),
        ("", "", "empty"),
        (
            BASE.replace("'{a}'", "'{b}'"),
            "command[1]",
            "unknown placeholder {b}; parameters are: a",
        ),
        (BASE.replace("'{a}'", "'{a.real}'"), "command[1]", "bare parameter names"),
        (BASE.replace("[1, 2]", '["x\\ny"]'), "parameters.grid.a[0]", "params_file: true"),
        (BASE + "inputs: [{path: ../x, template: a}]\n", "inputs[0].path", "'..'"),
        (BASE + "inputs: [{path: params.json, template: a}]\n", "inputs[0].path", "reserved"),
        (BASE + 'prerun: ["a\\nb"]\n', "prerun", "one shell line"),
        (BASE + "entrypoint: 'sh -c'\n", "entrypoint", "pattern"),
        (
            BASE + "job: {min_quorum: 2}\n",
            "job",
            "target_nresults (1) must be at least min_quorum (2)",
        ),
        (BASE + "job: {rsc_disk_bound: true}\n", "job.rsc_disk_bound", "not a boolean"),
        (
            BASE + "submit: {schedule: {interval: 5x}}\n",
            "submit.schedule.interval",
            "not a duration",
        ),
        (
            BASE + "submit: {schedule: {interval: 10, cron: '* * * * *'}}\n",
            "submit.schedule",
            "exactly one",
        ),
        (
            BASE + "outputs: [{file: a, kind: csv, pattern: x}]\n",
            "outputs[0]",
            "only allowed with kind 'regex'",
        ),
        (
            BASE + "outputs: [{file: a, kind: python, parser: 'not valid'}]\n",
            "outputs[0]",
            "package.module:function",
        ),
        (
            BASE + "outputs: [{file: a, kind: regex, pattern: '(?P<x'}]\n",
            "outputs[0]",
            "not a valid regex",
        ),
    ],
)
def test_each_kind_of_bad_spec(tmp_path: Path, text: str, where: str, match: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, text))
    assert any(p.location.startswith(where) and match in p.message for p in info.value.problems), (
        info.value
    )
    assert info.value.exit_code == 2


def test_spec_models_validate_cross_checks_directly() -> None:
    with pytest.raises(ValueError, match="unknown placeholder"):
        SweepSpec.model_validate(
            {"name": "s", "image": "i", "command": ["{x}"], "parameters": {"grid": {"a": [1]}}}
        )


# --------------------------------------------------------------------------- server config


def test_example_server_configs_load() -> None:
    for path in (ROOT / "configs" / "servers").glob("*.yaml"):
        cfg = load_server_config(path)
        assert cfg.mode in ("script", "batch", "fast")
    ssh = load_server_config(ROOT / "configs" / "servers" / "boinc-server-docker-ssh.yaml")
    assert ssh.results_url == "ssh://boincadm@boinc.example.org:22/results?container=apache"
    assert ssh.boinc_db.tunnel


def test_server_config_refuses_passwords_without_echoing_them(tmp_path: Path) -> None:
    head = "name: x\ntransport: ssh://u:hunter2@h/p\n"
    text = head + "boinc_db: {url: 'mysql+pymysql://root:hunter2@h/db', password: hunter2}\n"
    with pytest.raises(SpecError) as info:
        load_server_config(write(tmp_path, text))
    assert "hunter2" not in str(info.value)
    text = head + "boinc_db: {url: 'mysql+pymysql://root:hunter2@h/db'}\nmode: turbo\n"
    with pytest.raises(SpecError) as info:
        load_server_config(write(tmp_path, text))
    assert "hunter2" not in str(info.value)
    locs = {p.location.split(" ")[0] for p in info.value.problems}
    assert locs == {"transport", "boinc_db.url", "mode"}
    assert any("password_env" in p.message for p in info.value.problems)


def test_db_password_is_read_at_call_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = tmp_path / "secrets.env"
    secrets.write_text("# comment\nOTHER=1\nDB_PASSWD=s3cret\n")
    db = DbConfig(url="mysql+pymysql://root@127.0.0.1:3306/boincserver", password_file=str(secrets))
    assert "s3cret" not in repr(db)
    assert db.resolve_url() == "mysql+pymysql://root:s3cret@127.0.0.1:3306/boincserver"
    secrets.write_text("DB_PASSWD=changed\n")
    assert db.resolve_url().endswith(":changed@127.0.0.1:3306/boincserver")
    env_db = DbConfig(url="mysql+pymysql://root@h/db", password_env="BP_TEST_PW")
    monkeypatch.delenv("BP_TEST_PW", raising=False)
    with pytest.raises(ConfigError, match="BP_TEST_PW"):
        env_db.resolve_url()
    monkeypatch.setenv("BP_TEST_PW", "p@ss")
    assert env_db.resolve_url() == "mysql+pymysql://root:p%40ss@h/db"
    assert DbConfig(url="sqlite:///x.db").resolve_url() == "sqlite:///x.db"


def test_docker_results_url_and_timezone() -> None:
    cfg = ServerConfig(
        name="d",
        transport="docker://apache-1?user=boincadm&workdir=/home/boincadm/project",
        boinc_db={"url": "sqlite:///x"},
    )
    assert cfg.results_url == "docker://apache-1?user=boincadm&workdir=/results"
    with pytest.raises(ValueError, match="time zone"):
        ServerConfig(
            name="d", transport="local:///p", boinc_db={"url": "sqlite:///x"}, timezone="Mars/Base"
        )
