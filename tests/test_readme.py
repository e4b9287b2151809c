"""The README's Python snippets run as written (each in a fresh namespace, in a scratch directory)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_snippets():
    assert len(SNIPPETS) >= 3


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(index, tmp_path, monkeypatch):
    if "rnnzoo.hf" in SNIPPETS[index]:
        pytest.importorskip("transformers")  # the optional extra rnnzoo[hf]
    monkeypatch.chdir(tmp_path)  # a snippet that writes a file writes it here
    exec(compile(SNIPPETS[index], f"README.md snippet {index}", "exec"), {"__name__": "__readme__"})
