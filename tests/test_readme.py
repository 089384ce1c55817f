"""The README's quick start runs as written, and CI runs the README's test command."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_quick_start_runs():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 2, "quick start blocks missing from README.md"
    namespace = {}
    exec(compile(blocks[0], "README quick start", "exec"), namespace)
    assert namespace["loss"].item() > 0
    assert not any(s.requires_grad for s in namespace["state"])
    exec(compile(blocks[1], "README TBPTT helper", "exec"), namespace)
    result = namespace["result"]
    assert len(result.losses) == 2_000 // 25 and not result.state.requires_grad


def test_reset_and_diagnostics_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write a PNG
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    namespace = {}
    for i, block in enumerate(blocks[:4]):
        exec(compile(block, f"README block {i}", "exec"), namespace)
    assert len(namespace["result"].losses) == 2_000 // 50
    assert namespace["flow"].records and (tmp_path / "gradient_flow.png").exists()
    assert namespace["bias"].ks == [8, 32, 128]


def test_ci_runs_the_readme_test_command():
    command = re.search(r"Install and run the tests.*?```bash\n(.*?)\n```", README, re.S).group(1)
    assert command in (ROOT / ".ci" / "run").read_text()
