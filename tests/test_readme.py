"""The README's examples run as written (the Python quick start and the command-line block)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_opens_with_the_two_setup_commands():
    first = blocks("bash")[0].strip().splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert "torch==2.13.0" in makefile


def test_python_quick_start_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = blocks("python")[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    eq = namespace["eq"]
    # the 2x2 game in the README: 0.4 + 0.5 x = 0.6 - 0.5 x at x = 0.2, value 0.5
    assert eq.value == pytest.approx(0.5, abs=1e-9)
    assert eq.defender_strategy == pytest.approx([0.2, 0.8], abs=1e-9)
    assert (tmp_path / "game.png").stat().st_size > 1000


@pytest.mark.slow
def test_command_line_block_runs(tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    cli_block = blocks("bash")[1]
    ran = 0
    for line in cli_block.strip().splitlines():
        args = shlex.split(line.split("#")[0])
        if args[1] in ("run", "evaluate", "import-model"):  # covered by test_pipeline, test_evaluation, test_byom
            continue
        args = [a for a in args if not (a.startswith("[") or a.endswith("]"))]
        proc = subprocess.run(
            [sys.executable, "-m", "gametheory_defense", *args[1:]],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, (line, proc.stderr[-2000:])
        ran += 1
    assert ran == 4
    assert (tmp_path / "game.png").is_file() and (tmp_path / "eq.json").is_file()
