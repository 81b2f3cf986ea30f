"""Committed notebooks carry no outputs, and every notebook is in the book."""

from pathlib import Path

import nbformat
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "book").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name} cell {i} has outputs: clear them before committing"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


def _toc_files(node):
    if isinstance(node, dict):
        if "file" in node:
            yield node["file"]
        for value in node.values():
            yield from _toc_files(value)
    elif isinstance(node, list):
        for item in node:
            yield from _toc_files(item)


def test_every_chapter_is_in_the_toc():
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    listed = set(_toc_files(toc)) | {toc["root"]}
    pages = {str(p.relative_to(REPO).with_suffix("")) for p in NOTEBOOKS}
    pages |= {str(p.relative_to(REPO).with_suffix("")) for p in (REPO / "book").glob("*.md")}
    assert pages == listed, f"in book/ but not in _toc.yml: {pages - listed}; in _toc.yml only: {listed - pages}"
