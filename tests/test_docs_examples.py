"""The Python examples of docs/EMBEDDING.md run as written: each ```python block, in order, in a
fresh namespace, in a temporary folder."""

import pathlib
import re

import pytest

PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "EMBEDDING.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)


def test_the_page_has_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = compile(BLOCKS[index], f"{PAGE.name} example {index + 1}", "exec")
    exec(code, {"__name__": f"example_{index + 1}"})
