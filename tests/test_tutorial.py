"""The tutorial notebook in docs/ runs from top to bottom, so it cannot rot."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.slow
def test_tutorial_notebook_executes() -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(DOCS / "tutorial.ipynb", as_version=4)
    with warnings.catch_warnings():
        # jupyter_client warns about its platform folders; the notebook's own code is
        # what this test checks.
        warnings.simplefilter("ignore", DeprecationWarning)
        client = nbclient.NotebookClient(
            notebook,
            timeout=300,
            kernel_name="python3",
            resources={"metadata": {"path": str(DOCS)}},
        )
        client.execute()
    outputs = {
        i: "".join(
            str(o.get("data", {}).get("text/plain", "")) + str(o.get("text", ""))
            for o in cell.get("outputs", [])
        )
        for i, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
    }
    text = "\n".join(outputs.values())
    assert "grid-csv 20 points" in text
    assert "{'harvested': 20}" in text
    assert "out.f" in text
