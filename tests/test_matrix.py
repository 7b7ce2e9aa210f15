"""Tests of payoff.matrix: validation, convenience methods and exact file round trips."""

from __future__ import annotations

import doctest
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import payoff.matrix
from gametheory_defense.errors import GTDError
from payoff.matrix import FORMAT, PayoffError, PayoffMatrix, load_payoff

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEFENDERS = ("standard", "sap-0.5", "pgd-at")
ATTACKERS = ("fgsm-0.1", "pgd40-0.3")
VALUES = [[0.9, 0.0], [0.7, 0.2], [0.85, 0.6]]


def game(**kwargs: object) -> PayoffMatrix:
    args: dict[str, object] = dict(values=VALUES, defenders=DEFENDERS, attackers=ATTACKERS)
    args.update(kwargs)
    return PayoffMatrix(**args)  # type: ignore[arg-type]


def full_game() -> PayoffMatrix:
    return game(
        stderr=[[0.003, 0.0], [0.004, 0.004], [0.0036, 0.0049]],
        n_samples=[[10000, 10000], [10000, 10000], [10000, 10000]],
        clean_accuracy=[0.99, 0.98, 0.97],
        metadata={"dataset": "mnist", "eps": [0.1, 0.3]},
    )


# --------------------------------------------------------------------------- construction


def test_fields_are_normalised_copied_and_read_only() -> None:
    src = np.array(VALUES)
    m = game(values=src, defenders=list(DEFENDERS), n_samples=np.full((3, 2), 100.0))
    assert m.defenders == DEFENDERS and isinstance(m.defenders, tuple)
    assert m.values.dtype == np.float64 and m.n_samples is not None and m.n_samples.dtype == np.int64
    src[0, 0] = 0.0  # the matrix holds its own copy
    assert m.values[0, 0] == 0.9
    with pytest.raises(ValueError, match="read-only"):
        m.values[0, 0] = 0.5
    with pytest.raises(ValueError, match="read-only"):
        m.row("pgd-at")[0] = 0.5
    assert (m.shape, m.n_defenders, m.n_attackers) == ((3, 2), 3, 2)


def test_default_names() -> None:
    m = PayoffMatrix([[0.5, 0.25, 1.0]])
    assert m.defenders == ("d0",) and m.attackers == ("a0", "a1", "a2")
    assert PayoffMatrix([[0.5]], defenders=[]).defenders == ("d0",)


def test_payoff_error_is_a_project_value_error() -> None:
    assert issubclass(PayoffError, ValueError) and issubclass(PayoffError, GTDError)


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        (dict(values=[[0.9, 1.2], [0.1, 0.2], [0.3, 0.4]]), ["row 0 ('standard')", "column 1 ('pgd40-0.3')", "1.2", "[0, 1]"]),
        (dict(values=[[90, 10], [70, 20], [85, 60]]), ["row 0 ('standard')", "percentages"]),
        (dict(values=[[1, -1], [0, 0], [0, 0]]), ["column 1 ('pgd40-0.3')", "(A + 1) / 2"]),
        (dict(values=[[0.9, 0.1], [0.7, float("nan")], [0.1, 0.1]]), ["row 1 ('sap-0.5')", "column 1 ('pgd40-0.3')", "nan"]),
        (dict(values=[[0.9, 0.1], [0.7, 0.1], [float("inf"), 0.1]]), ["row 2 ('pgd-at')", "column 0 ('fgsm-0.1')", "inf"]),
        (dict(values=[[0.9, 0.1], [0.7], [0.1, 0.1]]), ["row 1 ('sap-0.5')", "ragged"]),
        (dict(values=[[0.9, 0.1], [0.7, "0.5"], [0.1, 0.1]]), ["row 1 ('sap-0.5')", "column 1 ('pgd40-0.3')", "not a number"]),
        (dict(values=[[0.9, True], [0.7, 0.1], [0.1, 0.1]]), ["row 0 ('standard')", "column 1", "not a number"]),
        (dict(values=[0.9, 0.1]), ["2-D"]),
        (dict(values=np.zeros((2, 2, 2))), ["2-D", "(2, 2, 2)"]),
        (dict(values=[], defenders=(), attackers=()), ["empty"]),
        (dict(values=np.zeros((0, 2)), defenders=()), ["empty"]),
        (dict(values=[[0.5, 0.5], [0.5, 0.5]]), ["2 row(s)", "3 defender names"]),
        (dict(attackers=("fgsm-0.1", "pgd40-0.3", "eot")), ["2 column(s)", "3 attacker names"]),
        (dict(defenders=("a", "b", "a")), ["duplicate defender name 'a'", "defenders 0 and 2"]),
        (dict(attackers=("x", "")), ["attacker 1", "empty name"]),
        (dict(attackers=("x", 3)), ["attacker 1", "int"]),
        (dict(defenders=("a", "b ", "c")), ["defender 1", "whitespace"]),
        (dict(defenders="abc"), ["list of strings"]),
        (dict(stderr=[[0.01, 0.01], [0.01, 0.01]]), ["stderr has shape (2, 2)", "(3, 2)"]),
        (dict(stderr=[[0.01, 0.01], [0.01, -0.01], [0.01, 0.01]]), ["row 1 ('sap-0.5')", "column 1", "stderr -0.01"]),
        (dict(stderr=[[0.01, 0.01], [0.01, 0.01], [0.01, 2.0]]), ["row 2 ('pgd-at')", "stderr 2.0", "0.5"]),
        (dict(n_samples=[[1, 1], [1, 1.5], [1, 1]]), ["row 1 ('sap-0.5')", "column 1", "whole numbers"]),
        (dict(n_samples=[[1, 1], [1, 1], [-3, 1]]), ["row 2 ('pgd-at')", "column 0 ('fgsm-0.1')", "negative"]),
        (dict(n_samples=np.array([[1, 1], [1, 1], [1, 2.5]])), ["row 2 ('pgd-at')", "column 1", "2.5"]),
        (dict(clean_accuracy=[0.9, 1.1, 0.9]), ["defender 1 ('sap-0.5')", "clean_accuracy 1.1"]),
        (dict(clean_accuracy=[0.9, 0.9]), ["clean_accuracy has 2 entries", "3 are needed"]),
        (dict(metadata={"model": object()}), ["JSON-serialisable"]),
        (dict(metadata={1: "x"}), ["keys must be strings"]),
        (dict(metadata=["x"]), ["must be a dict"]),
        # Integers beyond float / int64 range (a JSON file can hold them): PayoffError, not OverflowError.
        (dict(values=[[0.9, 0.1], [0.7, 10**400], [0.1, 0.1]]), ["row 1 ('sap-0.5')", "column 1", "too large"]),
        (dict(n_samples=[[1, 1], [1, 10**30], [1, 1]]), ["row 1 ('sap-0.5')", "column 1", "too large"]),
        (dict(n_samples=np.array([[1, 1], [1, 1], [1e30, 1]])), ["row 2 ('pgd-at')", "column 0", "below 2**63"]),
        (dict(clean_accuracy=[0.9, 10**400, 0.9]), ["defender 1 ('sap-0.5')", "too large"]),
    ],
)
def test_invalid_input_names_the_cell(kwargs: dict[str, object], fragments: list[str]) -> None:
    with pytest.raises(PayoffError) as info:
        game(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_metadata_is_a_json_normalised_copy() -> None:
    meta = {"eps": (0.1, 0.3), "nested": {"a": 1}}
    m = game(metadata=meta)
    meta["nested"]["a"] = 2  # type: ignore[index]
    assert m.metadata == {"eps": [0.1, 0.3], "nested": {"a": 1}}


def test_warns_when_attack_beats_clean_accuracy() -> None:
    with pytest.warns(UserWarning, match=r"row 1 \('sap-0.5'\), column 0 \('fgsm-0.1'\).*clean accuracy"):
        game(clean_accuracy=[0.95, 0.6, 0.9])
    # within three standard errors of the clean accuracy: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        game(clean_accuracy=[0.89, 0.69, 0.84], stderr=[[0.004] * 2] * 3)


# --------------------------------------------------------------------------- convenience


def test_row_column_and_unknown_names() -> None:
    m = game()
    assert m.row("sap-0.5").tolist() == [0.7, 0.2]
    assert m.column("pgd40-0.3").tolist() == [0.0, 0.2, 0.6]
    assert (m.defender_index("pgd-at"), m.attacker_index("fgsm-0.1")) == (2, 0)
    with pytest.raises(PayoffError, match=r"unknown defender 'eot'.*'standard', 'sap-0.5', 'pgd-at'"):
        m.row("eot")
    with pytest.raises(PayoffError, match="unknown attacker 'pgd'"):
        m.column("pgd")


def test_submatrix_slices_every_field_in_the_given_order() -> None:
    m = full_game()
    sub = m.submatrix(defenders=["pgd-at", "standard"], attackers=["pgd40-0.3"])
    assert sub.defenders == ("pgd-at", "standard") and sub.attackers == ("pgd40-0.3",)
    assert sub.values.tolist() == [[0.6], [0.0]]
    assert sub.stderr is not None and sub.stderr.tolist() == [[0.0049], [0.0]]
    assert sub.clean_accuracy is not None and sub.clean_accuracy.tolist() == [0.97, 0.99]
    assert sub.metadata == m.metadata
    assert m.submatrix() == m
    with pytest.raises(PayoffError, match="list of names"):
        m.submatrix(defenders="pgd-at")  # type: ignore[arg-type]
    with pytest.raises(PayoffError, match="no attackers selected"):
        m.submatrix(attackers=[])
    with pytest.raises(PayoffError, match="unknown attacker 'cw'"):
        m.submatrix(attackers=["cw"])
    with pytest.raises(PayoffError, match="duplicate defender name 'pgd-at'"):
        m.submatrix(defenders=["pgd-at", "pgd-at"])


def test_with_column_and_with_row_return_new_matrices() -> None:
    m = full_game()
    wider = m.with_column("eot10-pgd40-0.3", [0.0, 0.05, 0.55], stderr=[0.0, 0.002, 0.005], n_samples=[500] * 3)
    assert wider.attackers == (*ATTACKERS, "eot10-pgd40-0.3")
    assert wider.column("eot10-pgd40-0.3").tolist() == [0.0, 0.05, 0.55]
    assert wider.values[:, :2].tolist() == VALUES and m.shape == (3, 2)
    assert wider.n_samples is not None and wider.n_samples[:, 2].tolist() == [500] * 3
    taller = wider.with_row(
        "pgd-at+sap-0.5", [0.8, 0.65, 0.5], stderr=[0.004] * 3, n_samples=[500] * 3, clean_accuracy=0.96
    )
    assert taller.shape == (4, 3) and taller.row("pgd-at+sap-0.5").tolist() == [0.8, 0.65, 0.5]
    assert taller.clean_accuracy is not None and taller.clean_accuracy[-1] == 0.96

    with pytest.raises(PayoffError, match="carries stderr; pass stderr="):
        m.with_column("cw", [0.1, 0.1, 0.1], n_samples=[1, 1, 1])
    with pytest.raises(PayoffError, match="has no stderr"):
        game().with_column("cw", [0.1, 0.1, 0.1], stderr=[0.0, 0.0, 0.0])
    with pytest.raises(PayoffError, match="carries clean_accuracy"):
        m.with_row("x", [0.5, 0.5], stderr=[0, 0], n_samples=[1, 1])
    with pytest.raises(PayoffError, match="3 entries but 2 are needed"):
        game().with_row("x", [0.5, 0.5, 0.5])
    with pytest.raises(PayoffError, match=r"row 2 \('pgd-at'\), column 2 \('cw'\): value 1.5"):
        game().with_column("cw", [0.1, 0.1, 1.5])
    with pytest.raises(PayoffError, match="duplicate attacker name 'fgsm-0.1'"):
        game().with_column("fgsm-0.1", [0.1, 0.1, 0.1])


def test_equality_is_by_content_and_never_elementwise() -> None:
    a, b = full_game(), full_game()
    assert a == b and a.equals(b) and hash(a) == hash(b)
    assert a != game() and not a.equals(game())
    signed_zero = game(values=[[0.9, -0.0], [0.7, 0.2], [0.85, 0.6]])
    assert signed_zero == game() and hash(signed_zero) == hash(game())
    assert (a == "not a matrix") is False and not a.equals(np.array(VALUES))
    nudged = game(values=np.array(VALUES) + 1e-12)
    assert nudged != game() and nudged.equals(game(), atol=1e-9)
    other_meta = game(metadata={"x": 1})
    assert other_meta != game() and other_meta.equals(game(), check_metadata=False)
    assert game(defenders=("x", "y", "z")) != game()
    assert "3 defenders x 2 attackers" in repr(a)


# --------------------------------------------------------------------------- files


def test_to_dict_layout() -> None:
    d = full_game().to_dict()
    assert d["format"] == FORMAT and d["format_version"] == 1
    assert d["values"] == VALUES and d["defenders"] == list(DEFENDERS)
    assert d["clean_accuracy"] == [0.99, 0.98, 0.97] and d["n_samples"][0] == [10000, 10000]
    assert set(game().to_dict()) == {"format", "format_version", "defenders", "attackers", "values"}
    assert PayoffMatrix.from_dict(d) == full_game()
    del d["format"], d["format_version"]  # both optional on read
    assert PayoffMatrix.from_dict(d) == full_game()


@settings(max_examples=25, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 4)),
           elements=st.floats(0.0, 1.0, allow_subnormal=True)),
)
def test_json_and_csv_round_trip_exactly(tmp_path_factory: pytest.TempPathFactory, values: np.ndarray) -> None:
    tmp = tmp_path_factory.mktemp("rt")
    n, k = values.shape
    m = PayoffMatrix(
        values,
        defenders=[f"def,{i} \"q\"" for i in range(n)],  # commas and quotes survive CSV quoting
        attackers=[f"att {j}" for j in range(k)],
        stderr=values / 7.0,
        n_samples=np.arange(n * k).reshape(n, k),
        clean_accuracy=values.max(axis=1),
        metadata={"note": "round trip", "pi": 3.141592653589793},
    )
    m.to_json(tmp / "g.json")
    back = PayoffMatrix.from_json(tmp / "g.json")
    assert back == m and back.values.tobytes() == m.values.tobytes()
    with pytest.warns(UserWarning, match="CSV holds values only"):
        m.to_csv(tmp / "g.csv")
    from_csv = load_payoff(tmp / "g.csv")
    assert from_csv.values.tobytes() == m.values.tobytes()
    assert (from_csv.defenders, from_csv.attackers) == (m.defenders, m.attackers)
    assert from_csv.stderr is None and from_csv.metadata == {}


def test_json_file_layout_is_one_row_per_line(tmp_path: Path) -> None:
    game().to_json(tmp_path / "g.json")
    lines = (tmp_path / "g.json").read_text().splitlines()
    assert '    [0.9, 0.0],' in lines and '    [0.85, 0.6]' in lines
    json.loads((tmp_path / "g.json").read_text())


def test_csv_format(tmp_path: Path) -> None:
    game().to_csv(tmp_path / "g.csv")
    assert (tmp_path / "g.csv").read_text() == (
        "defender,fgsm-0.1,pgd40-0.3\nstandard,0.9,0.0\nsap-0.5,0.7,0.2\npgd-at,0.85,0.6\n"
    )
    # hand-written variants: BOM, spaces after commas, blank lines
    (tmp_path / "h.csv").write_text("\ufeffdefender, fgsm-0.1, pgd40-0.3\n\nstandard, 0.9, 0\nsap-0.5,0.7,.2\npgd-at,0.85,6e-1\n\n")
    assert load_payoff(tmp_path / "h.csv") == game()


def test_example_games_load() -> None:
    defense = load_payoff(EXAMPLES / "defense_game.json")
    assert defense.shape == (5, 6)
    assert {"standard", "sap-0.5", "pgd-at", "pgd-at+sap-0.5"} <= set(defense.defenders)
    assert {"fgsm-0.1", "pgd40-0.3"} <= set(defense.attackers)
    assert defense.stderr is not None and defense.n_samples is not None and defense.clean_accuracy is not None
    # no defender is more accurate under attack than without
    assert (defense.values <= defense.clean_accuracy[:, None]).all()
    rps = load_payoff(EXAMPLES / "rps_game.json")
    assert rps.values.tolist() == [[0.5, 0.0, 1.0], [1.0, 0.5, 0.0], [0.0, 1.0, 0.5]]


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD = {"defenders": ["d", "e"], "attackers": ["x", "y"], "values": [[0.5, 0.25], [0.75, 1.0]]}


@pytest.mark.parametrize(
    ("name", "text", "fragments"),
    [
        ("g.json", '{"defenders": ["d"], "attackers": ["x"], "values": [[0.5]]', ["invalid JSON at line 1"]),
        ("g.json", "[1, 2]", ["JSON object", "list"]),
        ("g.json", json.dumps({k: v for k, v in GOOD.items() if k != "values"}), ["missing key 'values'"]),
        ("g.json", json.dumps({**GOOD, "std_err": [[0, 0], [0, 0]]}), ["unknown key 'std_err'"]),
        ("g.json", '{"defenders": ["d", "e"], "defenders": ["d", "e"], "attackers": ["x", "y"], "values": [[0.5, 0.25], [0.75, 1.0]]}', ["duplicate JSON key 'defenders'"]),
        ("g.json", json.dumps({**GOOD, "format": "other/thing"}), ["'format' is 'other/thing'"]),
        ("g.json", json.dumps({**GOOD, "format_version": 2}), ["format_version 2 is newer", "upgrade"]),
        ("g.json", json.dumps({**GOOD, "defenders": "de"}), ["'defenders' must be a list"]),
        ("g.json", json.dumps({**GOOD, "values": [[0.5, 0.25], [0.75]]}), ["row 1 ('e')", "ragged"]),
        ("g.json", json.dumps({**GOOD, "values": [[0.5, 0.25], [0.75, "high"]]}), ["row 1 ('e'), column 1 ('y')", "'high'"]),
        ("g.json", json.dumps({**GOOD, "values": [[0.5, 0.25], [0.75, None]]}), ["row 1 ('e'), column 1 ('y')", "None"]),
        ("g.json", '{"defenders": ["d", "e"], "attackers": ["x", "y"], "values": [[0.5, NaN], [0.75, 1.0]]}', ["row 0 ('d'), column 1 ('y')", "nan"]),
        ("g.json", json.dumps({**GOOD, "values": [[0.5, 0.25], [0.75, 1.01]]}), ["row 1 ('e'), column 1 ('y')", "1.01", "outside [0, 1]"]),
        ("g.json", json.dumps({**GOOD, "attackers": ["x", "x"]}), ["duplicate attacker name 'x'"]),
        ("g.csv", "defender,x,y\nd,0.5,0.25\ne,0.75\n", ["line 3", "row 1 ('e'), column 1 ('y')", "missing value"]),
        ("g.csv", "defender,x,y\nd,0.5,0.25,0.1\ne,0.75,1\n", ["line 2", "row 0 ('d')", "3 values", "2 attackers"]),
        ("g.csv", "defender,x,y\nd,0.5,0.25\ne,0.75,n/a\n", ["line 3", "row 1 ('e'), column 1 ('y')", "'n/a' is not a number"]),
        ("g.csv", "defender,x,y\nd,0.5,\ne,0.75,1\n", ["line 2", "row 0 ('d'), column 1 ('y')", "empty cell"]),
        ("g.csv", "defender,x,y\nd,0.5,nan\ne,0.75,1\n", ["row 0 ('d'), column 1 ('y')", "nan"]),
        ("g.csv", "defender,x,y\nd,0.5,25\ne,0.75,1\n", ["row 0 ('d'), column 1 ('y')", "25.0 is outside [0, 1]"]),
        ("g.csv", "defender,x,y\nd,0.5,0.2\nd,0.75,1\n", ["duplicate defender name 'd'"]),
        ("g.csv", "model,x,y\nd,0.5,0.2\n", ["line 1", "header must start with 'defender'"]),
        ("g.csv", "defender\nd\n", ["names no attackers"]),
        ("g.csv", "defender,x\n", ["no defender rows"]),
        ("g.csv", "\n\n", ["empty file"]),
        ("g.csv", 'defender,x\n"d,0.5\n', ["malformed CSV"]),
        ("g.txt", "whatever", ["unknown payoff file type '.txt'", ".json or .csv"]),
        ("g.json", '{"defenders": ["d"], "attackers": ["x"], "values": [[1' + "0" * 400 + "]]}", ["row 0 ('d'), column 0 ('x')", "too large"]),
        ("g.json", '{"values": ' + "[" * 50_000 + "]" * 50_000 + "}", ["nested too deeply"]),
    ],
)
def test_load_errors_name_file_row_and_column(tmp_path: Path, name: str, text: str, fragments: list[str]) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(PayoffError) as info:
        load_payoff(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_csv_names_ignore_spaces_around_commas(tmp_path: Path) -> None:
    path = write(tmp_path, "g.csv", "defender , x , y\nd , 0.5 , 0.25\ne, 0.75, 1\n")
    m = load_payoff(path)
    assert m.defenders == ("d", "e") and m.attackers == ("x", "y")
    assert m.values.tolist() == [[0.5, 0.25], [0.75, 1.0]]


def test_missing_file_and_bad_encoding(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such payoff file"):
        load_payoff(tmp_path / "absent.json")
    (tmp_path / "latin1.csv").write_bytes("defender,x\ncaf\xe9,0.5\n".encode("latin-1"))
    with pytest.raises(PayoffError, match="not UTF-8"):
        load_payoff(tmp_path / "latin1.csv")


def test_docstring_examples_run() -> None:
    result = doctest.testmod(payoff.matrix, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 3 and result.failed == 0


def test_name_lists_in_a_file_must_match_the_matrix(tmp_path: Path) -> None:
    # Before: "defenders": [] was silently replaced by d0, d1, ...
    for key in ("defenders", "attackers"):
        d = {"defenders": ["a", "b"], "attackers": ["x", "y"], "values": [[0.5, 0.25], [0.75, 1.0]], key: []}
        path = write(tmp_path, "g.json", json.dumps(d))
        with pytest.raises(PayoffError, match=f"'{key}' is empty; it must name every"):
            load_payoff(path)


def test_percentage_hint_only_when_most_values_are_above_one() -> None:
    # Before: a single 1.5 among values of 0.12 was called "percentages".
    typo = np.full((4, 4), 0.12)
    typo[2, 3] = 1.5
    with pytest.raises(PayoffError) as info:
        PayoffMatrix(typo)
    assert "percentages" not in str(info.value) and "row 2 ('d2'), column 3 ('a3')" in str(info.value)
    with pytest.raises(PayoffError, match="look like percentages"):
        PayoffMatrix(np.full((4, 4), 12.0))
    with pytest.raises(PayoffError, match="win/loss"):
        PayoffMatrix([[1.0, -1.0], [-1.0, 1.0]])


def test_csv_memory_stays_near_the_file_size(tmp_path: Path) -> None:
    # Before: a 275 MB CSV peaked at 4.4 GB (16x): the whole text, then lists of strings and
    # of Python floats. Now rows become float64 arrays as they are read.
    import tracemalloc

    values = np.random.default_rng(0).uniform(size=(400, 500))  # ~19 characters per value
    path = tmp_path / "big.csv"
    PayoffMatrix(values).to_csv(path)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        loaded = load_payoff(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(loaded.values, values)
    assert peak < 1.5 * size, (peak, size)  # 1.08x; before: 11.5x on this file
