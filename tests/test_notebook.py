"""docs/tutorial.ipynb runs as a student runs it, in a real Jupyter kernel (nbclient), on the
shipped slice of MNIST with a small budget; it is kept in the repository without outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")
pytest.importorskip("captum")

from conftest import FIXTURE_DATA, REPO  # noqa: E402

NOTEBOOK = REPO / "docs" / "tutorial.ipynb"


def test_the_notebook_is_stored_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


def test_the_tutorial_notebook_runs_in_a_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQMNIST_TUTORIAL_DATA", str(FIXTURE_DATA / "mnist"))
    monkeypatch.setenv("SEQMNIST_TUTORIAL_LIMIT", "1000")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "more accurate than" in text or "No significant difference" in text
    assert "Quick run, not a result (" in text  # 1,000 images: the verdict says what it is
    assert "it knew from row" in text
    # progress bars are notebook widgets, not a stream of lines
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(widgets) >= 2 and "it/s]" not in text and "batch/s" not in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any(h.startswith("<iframe srcdoc=") for h in html)  # the explanation drew itself
    assert (Path(tmp_path) / "reports" / "tutorial" / "report.md").is_file()
