"""Tests of ``gtdefense solve`` and ``gtdefense plot``: known answers and one-line errors."""

from __future__ import annotations

import json
import logging
import os
import runpy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from gametheory_defense import Equilibrium
from gametheory_defense.cli import main
from gametheory_defense.solvers import SELECTIONS
from payoff.matrix import PayoffMatrix

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
RPS_FILE = EXAMPLES / "rps_game.json"
DEFENSE_FILE = EXAMPLES / "defense_game.json"
EQ_KEYS = {"value", "exploitability", "method", "status", "defender_strategy", "attacker_strategy"}
# The example defense game's unique equilibrium, solved by hand on its 2 x 2 core
# (pgd-at, pgd-at+sap-0.5) x (cw-pgd40-0.3, eot10-pgd40-0.3):
# x = 0.041 / 0.054 on pgd-at, y = 0.022 / 0.054 on cw-pgd40-0.3, value = 47.936 / 54.
DEFENSE_VALUE = 47.936 / 54
DEFENSE_X = {"pgd-at": 41 / 54, "pgd-at+sap-0.5": 13 / 54}
DEFENSE_Y = {"cw-pgd40-0.3": 22 / 54, "eot10-pgd40-0.3": 32 / 54}


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``gtdefense`` in-process; argparse errors arrive as SystemExit."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = int(stop.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- good input


def test_solve_rps_writes_the_known_equilibrium(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "eq.json"
    code, out, err = cli(["solve", RPS_FILE, "--out", out_file], capsys)
    assert (code, err) == (0, "")
    d = json.loads(out_file.read_text())
    assert EQ_KEYS <= set(d)
    # RPS has value 0 in win/loss units; the accuracy file holds (A + 1) / 2, so 0.5 here.
    assert d["value"] == pytest.approx(0.5, abs=1e-7)
    assert d["exploitability"] == pytest.approx(0.0, abs=1e-7)
    for side in ("defender_strategy", "attacker_strategy"):
        assert set(d[side]) == {"rock", "paper", "scissors"}
        for p in d[side].values():
            assert p == pytest.approx(1 / 3, abs=1e-7)
    assert d["method"] == "lp"
    table = out.splitlines()
    assert table[0].endswith("3 defenders x 3 attackers")
    assert any(line.split()[:2] == ["rock", "0.3333"] for line in table)
    assert any(line.split()[:2] == ["value", "0.500000"] for line in table)
    assert any(line.split()[0] == "status" for line in table)
    eq = Equilibrium.from_dict(d)
    np.testing.assert_allclose(eq.defender_strategy, [1 / 3] * 3, atol=1e-7)


@pytest.mark.parametrize("select", [None, *SELECTIONS])
def test_solve_defense_game_from_json_and_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], select: str | None
) -> None:
    game = PayoffMatrix.from_json(DEFENSE_FILE)
    csv_file = tmp_path / "game.csv"
    with pytest.warns(UserWarning, match="values only"):
        game.to_csv(csv_file)
    for source in (DEFENSE_FILE, csv_file):
        out_file = tmp_path / "eq.json"
        extra = [] if select is None else ["--select", select]
        code, out, err = cli(["solve", source, "--out", out_file, "--tol", "1e-10", *extra], capsys)
        if select == "clean" and source == csv_file:  # CSV carries no clean accuracies
            assert code == 2 and "clean accuracy" in err and len(err.splitlines()) == 1
            continue
        assert (code, err) == (0, "")
        d = json.loads(out_file.read_text())
        assert d["value"] == pytest.approx(DEFENSE_VALUE, abs=1e-7)
        for name in game.defenders:
            assert d["defender_strategy"][name] == pytest.approx(DEFENSE_X.get(name, 0.0), abs=1e-6)
        for name in game.attackers:
            assert d["attacker_strategy"][name] == pytest.approx(DEFENSE_Y.get(name, 0.0), abs=1e-6)
        assert "88.77% accuracy guaranteed" in out


def test_solve_table_is_aligned(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["solve", RPS_FILE, "--method", "support-enumeration"], capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()[1:]  # after the "N defenders x M attackers" heading
    # Every label is padded to the longest one ("exploitability"), then two spaces.
    width = len("exploitability")
    for line in lines:
        assert line[:width].rstrip() == line.split()[0] and line[width : width + 2] == "  ", out
    assert lines[-2].split() == ["method", "support-enumeration"]
    assert lines[-1].split() == ["status", "optimal"]


def test_warnings_are_one_line_each(caplog: pytest.LogCaptureFixture) -> None:
    from gametheory_defense.cli import warning_line

    with caplog.at_level(logging.WARNING, logger="py.warnings"):
        warning_line(UserWarning("first line\n  second line"), UserWarning, "/x/y.py", 3, line="warnings.warn(...)")
    assert [r.getMessage() for r in caplog.records] == ["UserWarning: first line second line"]


def test_warnings_in_a_real_process_are_one_line_each(tmp_path: Path) -> None:
    # Clean accuracy below an attacked accuracy (a PayoffMatrix warning) and an iterative
    # solver stopped at max_iterations (a solver warning): two warnings, two stderr lines.
    game = tmp_path / "warn.json"
    mixed = {**GOOD, "values": [[0.9, 0.2], [0.3, 0.8]], "clean_accuracy": [0.3, 1.0]}
    game.write_text(json.dumps(mixed), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "gametheory_defense", "solve", str(game),
         "--method", "fictitious-play", "--tol", "1e-12"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::DeprecationWarning"},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr
    assert all(line.startswith("WARNING py.warnings: UserWarning: ") for line in lines), proc.stderr
    assert "exceeds the defender's clean accuracy" in lines[0]
    assert "max-iterations" in lines[1]


def test_plot_writes_an_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    eq_file, fig_file = tmp_path / "eq.json", tmp_path / "game.png"
    assert cli(["solve", DEFENSE_FILE, "-o", eq_file], capsys)[0] == 0
    code, out, err = cli(["plot", DEFENSE_FILE, "--equilibrium", eq_file, "-o", fig_file, "--dpi", "40"], capsys)
    assert (code, err) == (0, "") and f"wrote {fig_file}" in out
    assert fig_file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = cli(["plot", RPS_FILE, "-o", tmp_path / "rps.svg"], capsys)
    assert (code, err) == (0, "") and "<svg" in (tmp_path / "rps.svg").read_text()


def test_example_script(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    fig_file = tmp_path / "example.png"
    monkeypatch.setattr(sys, "argv", ["solve_example.py", str(fig_file)])
    runpy.run_path(str(EXAMPLES / "solve_example.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "guaranteed accuracy 88.77% (best single defender: 88.00%)" in out
    assert "play pgd-at " in out and "probability 0.759" in out
    assert fig_file.read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------- bad input

GOOD = {"defenders": ["a", "b"], "attackers": ["x", "y"], "values": [[0.5, 0.25], [0.75, 1.0]]}


def _file(name: str, text: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / name
        path.write_text(text, encoding="utf-8")
        return path

    return make


def _mismatched_equilibrium(tmp: Path) -> Path:
    """An RPS equilibrium file, to be plotted against the defense game."""
    path = tmp / "rps_eq.json"
    assert main(["solve", str(RPS_FILE), "--out", str(path)]) == 0
    return path


# (argv built from tmp -> file, expected fragment of the one stderr line)
BAD_CASES: dict[str, tuple[Callable[[Path], list[object]], str]] = {
    "missing file": (lambda t: ["solve", t / "absent.json"], "absent.json: no such payoff file"),
    "malformed json": (
        lambda t: ["solve", _file("g.json", '{"defenders": ["a"], "values": [[0.5]')(t)],
        "g.json: invalid JSON at line 1",
    ),
    "ragged csv": (
        lambda t: ["solve", _file("g.csv", "defender,x,y\na,0.5,0.25\nb,0.75\n")(t)],
        "g.csv: line 3: row 1 ('b'), column 1 ('y'): missing value",
    ),
    "non-numeric csv": (
        lambda t: ["solve", _file("g.csv", "defender,x,y\na,0.5,0.25\nb,0.75,high\n")(t)],
        "row 1 ('b'), column 1 ('y'): 'high' is not a number",
    ),
    "nan": (
        lambda t: ["solve", _file("g.json", json.dumps({**GOOD, "values": [[0.5, float("nan")], [0.75, 1.0]]}))(t)],
        "g.json: row 0 ('a'), column 1 ('y'): value is nan",
    ),
    "out of range": (
        lambda t: ["solve", _file("g.json", json.dumps({**GOOD, "values": [[50, 25], [75, 100]]}))(t)],
        "g.json: row 0 ('a'), column 0 ('x'): value 50.0 is outside [0, 1]",
    ),
    "duplicate names": (
        lambda t: ["solve", _file("g.json", json.dumps({**GOOD, "defenders": ["a", "a"]}))(t)],
        "duplicate defender name 'a'",
    ),
    "unknown suffix": (lambda t: ["solve", _file("g.txt", "x")(t)], "unknown payoff file type '.txt'"),
    "unknown method": (lambda t: ["solve", RPS_FILE, "--method", "simplex-magic"], "invalid choice: 'simplex-magic'"),
    "unknown select": (lambda t: ["solve", RPS_FILE, "--select", "prettiest"], "invalid choice: 'prettiest'"),
    "bad tol": (lambda t: ["solve", RPS_FILE, "--tol", "-1"], "must be a positive finite number"),
    "equilibrium not matching": (
        lambda t: ["plot", DEFENSE_FILE, "-e", _mismatched_equilibrium(t), "-o", t / "f.png"],
        "rps_eq.json does not fit",
    ),
    "malformed equilibrium": (
        lambda t: ["plot", RPS_FILE, "-e", _file("eq.json", "[1, 2]")(t), "-o", t / "f.png"],
        "eq.json: an equilibrium file holds a JSON object",
    ),
    "unknown image type": (lambda t: ["plot", RPS_FILE, "-o", t / "f.xyz"], "unknown image type '.xyz'"),
    "deeply nested equilibrium": (  # before: a RecursionError traceback
        lambda t: ["plot", RPS_FILE, "-e", _file("eq.json", "[" * 100_000 + "]" * 100_000)(t), "-o", t / "f.png"],
        "eq.json: JSON nested too deeply to be an equilibrium file",
    ),
    "empty name list": (  # before: silently replaced by d0, d1
        lambda t: ["solve", _file("g.json", json.dumps({**GOOD, "defenders": []}))(t)],
        "g.json: 'defenders' is empty; it must name every row",
    ),
    "number too large": (
        lambda t: ["solve", _file("g.json", json.dumps({**GOOD, "values": [[0.5, 10**400], [0.75, 1.0]]}))(t)],
        "g.json: row 0 ('a'), column 1 ('y'): values entry 1000",
    ),
    "unwritable output": (
        lambda t: ["solve", RPS_FILE, "--out", t / "no-such-dir" / "eq.json"],
        "eq.json: cannot write the equilibrium (No such file or directory)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_in_process(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_argv, fragment = BAD_CASES[case]
    argv = make_argv(tmp_path)
    capsys.readouterr()  # drop output of any setup solve
    code, out, err = cli(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    assert fragment in err, err
    assert err.startswith(f"gtdefense {argv[0]}: error: ")
    assert not (tmp_path / "f.png").exists() and not (tmp_path / "f.xyz").exists()


# One case of each kind of failure (file system, file content, argparse, a second file
# that does not fit) also runs as a real process; every case runs in-process above. Each
# process start imports numpy, scipy and torch (about 3 s), hence not all of them.
SUBPROCESS_CASES = ("missing file", "nan", "ragged csv", "unknown method", "equilibrium not matching")


def test_bad_input_in_subprocess(tmp_path: Path) -> None:
    """The issue's bad-input cases through real ``python -m gametheory_defense`` processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    jobs = []
    for k, case in enumerate(SUBPROCESS_CASES):
        tmp = tmp_path / str(k)
        tmp.mkdir()
        make_argv, fragment = BAD_CASES[case]
        argv = [str(a) for a in make_argv(tmp)]
        jobs.append((case, fragment, argv))
    procs = [
        (case, fragment, subprocess.Popen(
            [sys.executable, "-m", "gametheory_defense", *argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
        ))
        for case, fragment, argv in jobs
    ]
    results = []
    for case, fragment, proc in procs:
        _, err = proc.communicate(timeout=120)
        results.append((case, fragment, proc.returncode, err))
    for case, fragment, code, err in results:
        assert code == 2, (case, err)
        assert len(err.splitlines()) == 1, (case, err)
        assert "Traceback" not in err and fragment in err, (case, err)
