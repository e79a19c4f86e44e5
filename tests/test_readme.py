"""The README's two set-up commands are what CI runs and what a fresh machine needs."""
from pathlib import Path
import re

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks():
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_has_install_and_main_job_and_test_commands():
    blocks = [b.strip() for b in _bash_blocks()]
    main_job = [b for b in blocks if "dalivssl pretrain --task vcop --arch shufflenet" in b]
    tests = [b for b in blocks if "pytest" in b]
    assert main_job and main_job[0].startswith("python3 -m pip install")
    assert tests and tests[0].startswith("python3 -m pip install")


def test_ci_runs_the_readme_test_command_verbatim():
    test_cmd = next(b.strip() for b in _bash_blocks() if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in [line.strip() for line in ci]


def test_readme_python_tour_runs(tmp_path, monkeypatch):
    """The README's Python example runs as written (on a small synthetic dataset)."""
    import torch

    from dalivssl.data import synth

    small = synth.generate(tmp_path / "synth", videos=6, classes=3, frames=72, size=64, seed=0)
    monkeypatch.setattr(synth, "ensure_default_dataset", lambda *a, **k: small)
    code = next(b for b in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(),
                                      re.S))
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["plan"].frames.shape == (3, 16)
    assert tuple(scope["batch"].clips.shape) == (2, 3, 3, 16, 64, 64)
    assert torch.isfinite(scope["out"]["loss"])
    assert scope["noisy"].shape == scope["frames"].shape
