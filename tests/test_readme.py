"""The README's quick start runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_quick_start_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "no python block in README.md"
    namespace = {}
    exec(compile(blocks[0], "README quick start", "exec"), namespace)
    assert namespace["loss"].item() > 0
    assert not any(s.requires_grad for s in namespace["state"])
