"""The validate, plan and schema commands, run through the real ``boinc-pipeline`` entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "configs" / "examples"
SERVERS = ROOT / "configs" / "servers"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_ok_reports_modes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", str(EXAMPLES / "grid-csv.yaml"))
    assert code == 0
    assert "20 points" in out
    assert "modes that fit: batch, fast, script" in out
    code, out, _ = run(
        capsys,
        "validate",
        str(EXAMPLES / "lhs-json.yaml"),
        "--server",
        str(SERVERS / "local-emulator.yaml"),
    )
    assert code == 0
    assert "mode: batch (from submit.mode)" in out


def test_validate_refuses_a_mode_that_cannot_carry_the_spec(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = (EXAMPLES / "lhs-json.yaml").read_text().replace("mode: batch", "mode: script")
    path = tmp_path / "s.yaml"
    path.write_text(spec)
    code, _, err = run(capsys, "validate", str(path))
    assert code == 2
    assert "mode 'script' (from submit.mode) cannot carry inputs, params_file, prerun" in err
    assert "modes that fit: batch, fast" in err
    server = tmp_path / "server.yaml"
    server.write_text(
        (SERVERS / "local-emulator.yaml").read_text().replace("mode: batch", "mode: script")
    )
    path.write_text(spec.replace("  mode: script\n", ""))
    code, _, err = run(capsys, "validate", str(path), "--server", str(server))
    assert code == 2
    assert f"from {server} mode" in err


def test_bad_spec_exits_2_listing_every_problem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: BAD\nimage: img\nparameters: {grid: {a: [1]}}\njob: {min_quorum: zero}\nextra: 1\n"
    )
    code, out, err = run(capsys, "validate", str(path))
    assert code == 2
    assert out == ""
    assert "3 problems" in err
    for piece in (
        str(path),
        "name (line 1)",
        "'BAD'",
        "job.min_quorum (line 4)",
        "'zero'",
        "extra (line 5)",
        "unknown field",
    ):
        assert piece in err
    code, _, err = run(capsys, "plan", str(path))
    assert code == 2
    assert "3 problems" in err
    code, _, err = run(capsys, "validate", str(tmp_path / "missing.yaml"))
    assert code == 2
    assert "cannot read the file" in err


def test_plan_jsonl(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "plan", str(EXAMPLES / "grid-csv.yaml"), "--format", "jsonl", "--limit", "3"
    )
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 3
    for r in rows:
        assert {"wu_name", "point_id", "attempt", "params", "argv"} <= r.keys()
        assert r["argv"][r["argv"].index("--wu_name") + 1] == r["wu_name"]
    assert rows[0]["params"] == {"x": 0.0, "y": 1}
    assert "worst case 20 volunteer runs per point" in err
    code, out, _ = run(
        capsys, "plan", str(EXAMPLES / "lhs-json.yaml"), "--format", "jsonl", "--attempt", "2"
    )
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 8
    assert all(r["wu_name"].endswith("_a2") for r in rows)
    assert all("shared/params.json" in r["input_files"] for r in rows)


def test_plan_table_summary(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(
        "name: dup\nimage: img\ncommand: [run, '{a}']\nparameters: {grid: {a: [1, 2, 1, 3, 3]}}\n"
    )
    code, out, _ = run(capsys, "plan", str(path), "--limit", "2")
    assert code == 0
    assert "dup" in out
    assert "5 (3 distinct)" in out
    assert 'e.g. {"a": 1}' in out
    assert 'e.g. {"a": 3}' in out
    assert "20 (max_attempts 2 x max_total_results 10)" in out
    assert "batch, fast, script" in out
    assert "1 more" in out


def test_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "schema")
    doc = json.loads(out)
    assert code == 0
    assert {"name", "image", "parameters", "job", "submit", "outputs"} <= doc["properties"].keys()
    assert doc["additionalProperties"] is False
    code, out, _ = run(capsys, "schema", "--server")
    assert code == 0
    assert "boinc_db" in json.loads(out)["properties"]


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in ("validate", "plan", "schema"):
        code, out, _ = run(capsys, cmd, "--help")
        assert code == 0
        assert "Examples:" in out
