"""Documentation that is generated from the code stays equal to what the code generates."""

from __future__ import annotations

from pathlib import Path

from pipeline.schema_doc import markdown_reference

ROOT = Path(__file__).resolve().parent.parent


def test_spec_reference_is_up_to_date() -> None:
    committed = (ROOT / "docs" / "spec-reference.md").read_text()
    assert committed == markdown_reference(), (
        "docs/spec-reference.md is stale: run "
        "`.venv/bin/boinc-pipeline schema --markdown > docs/spec-reference.md`"
    )


def test_readme_opens_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text().splitlines()[:15]
    assert any("make demo" in line for line in head)
    assert any("make test" in line for line in head)
