"""``report.md`` of a pipeline run: the paper's protocol and the adaptive one, side by side.

Every number in the report is formatted by :func:`pct` from the same values written to
``payoff.json``, ``equilibrium.json`` and ``robustness.json`` (a test checks this).
A randomized defense is never called robust on the configured (non-adaptive) attackers alone.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gametheory_defense.provenance import environment, reproduce_command
from gametheory_defense.stats import game_value_interval

__all__ = ["pct", "write_report", "render_report"]



def _attacker_eps(config: Any) -> set[float]:
    return {float(a.params["eps"]) for a in config.attackers if "eps" in a.params}


def _attacker_threats(config: Any) -> str:
    """``"linf eps 0.05, 0.1"``: the attackers' norms and radii."""
    by_norm: dict[str, set[float]] = {}
    for a in config.attackers:
        if "eps" in a.params:
            by_norm.setdefault(str(a.params.get("norm", "linf")), set()).add(float(a.params["eps"]))
    return "; ".join(f"{n} eps {', '.join(f'{e:g}' for e in sorted(v))}" for n, v in sorted(by_norm.items()))

def pct(value: float | None) -> str:
    """Format an accuracy in [0, 1] as a percentage with two decimals (``"n/a"`` for None)."""
    if value is None:
        return "n/a"
    return f"{100.0 * float(value):.2f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def render_report(
    *,
    config: Any,
    matrix: Any,
    equilibrium: Any,
    robustness: Mapping[str, Any] | None,
    double_oracle: Any | None,
    seconds: Mapping[str, float],
    device: str,
    command: Sequence[str] | None,
) -> str:
    """Return the Markdown text of ``report.md``."""
    values = np.asarray(matrix.values)
    x = np.asarray(equilibrium.defender_strategy)
    row_min = values.min(axis=1)
    best = int(np.argmax(row_min))
    clean = matrix.clean_accuracy
    value_iv = game_value_interval(matrix, equilibrium)
    value_ci = (
        f" (95% CI [{pct(value_iv.low)}, {pct(value_iv.high)}], standard error {100.0 * value_iv.stderr:.2f} points "
        "from the cells of the binding columns)"
        if np.isfinite(value_iv.low)
        else ""
    )
    lines: list[str] = [f"# gametheory-defense report: {config.name}", ""]
    lines += [
        f"Data set `{config.data.dataset}`, {values.shape[0]} defenders x {values.shape[1]} attackers "
        f"(formulation `{config.game.formulation}`), evaluated on {config.data.eval_size} test images "
        f"(offset {config.data.eval_offset}), stochastic defenders over {config.game.repeats} draws. "
        f"Solver `{equilibrium.method}`, selection `{equilibrium.select}`.",
        "",
        "## 1. The game (the source paper's protocol: configured attackers only)",
        "",
        "Rows are defenders (the maximizer), columns the configured attackers, cells accuracy. "
        f"Threat models of the attackers: {_attacker_threats(config)}; {config.data.eval_size} test images.",
        "",
    ]
    rows = []
    for i, name in enumerate(matrix.defenders):
        worst_j = int(np.argmin(values[i]))
        rows.append(
            [
                f"`{name}`",
                pct(clean[i]) if clean is not None else "n/a",
                f"{pct(row_min[i])} (`{matrix.attackers[worst_j]}`)",
                f"{x[i]:.4f}",
            ]
        )
    lines += _table(["defender", "clean accuracy", "worst-case accuracy (attack)", "equilibrium weight"], rows)
    lines += [
        "",
        f"- **Game value** (the mixture's guaranteed accuracy against these attackers): **{pct(equilibrium.value)}**{value_ci}; "
        f"exploitability certificate {equilibrium.exploitability:.2e}.",
        f"- **Best pure defender** (maximin row): `{matrix.defenders[best]}` at {pct(row_min[best])}; "
        f"the mixture's gain over it under this protocol: {100.0 * (equilibrium.value - row_min[best]):+.2f} points.",
        (
            "- These attackers are crafted against each defender separately; a mixture is not evaluated against "
            "attacks aimed at the mixture itself here, so this value is **not** a robustness claim. See section 3."
            if config.game.formulation == "self"
            else "- Columns are (attack, source model) pairs: each attack is crafted once against its source and "
            "every defender is evaluated on those examples (a transfer threat). Nothing is crafted against the "
            "mixture itself here, so this value is **not** a robustness claim. See section 3."
        ),
        "",
        "![payoff matrix](payoff.png)",
        "",
    ]
    if double_oracle is not None:
        lines += _double_oracle_lines(config, double_oracle)
        lines += ["", "![double-oracle convergence](double_oracle.png)", ""]
    if robustness is not None:
        tm = robustness["threat_model"]
        lines += [
            "## 3. Adaptive evaluation (the number to quote)",
            "",
            f"Threat model {tm['norm']} eps {tm['eps']}; {config.evaluation.size or config.data.eval_size} test "
            f"images; suite `{config.evaluation.suite}` "
            "(see docs/evaluation.md), run on every model on the same examples. Worst case is per example "
            "over all attacks; for stochastic models the accuracy is averaged over draws. The suite adapts "
            "to the model: PGD and APGD for deterministic models, EOT versions for randomized ones, "
            "mixture-aware PGD and ARC for mixtures (`-`: not in the suite for that kind of model).",
            "",
        ]
        names = [k for k in robustness if k != "threat_model"]
        attack_names: list[str] = []
        for k in names:
            for a in robustness[k]["attacks"]:
                if a not in attack_names:
                    attack_names.append(a)
        rrows = []
        for k in names:
            r = robustness[k]
            rrows.append(
                [f"`{k}`", pct(r["clean_accuracy"])]
                + [pct(r["attacks"][a]) if a in r["attacks"] else "-" for a in attack_names]
                + [f"**{pct(r['worst_case_accuracy'])}**"]
            )
        lines += _table(["model", "clean", *[f"`{a}`" for a in attack_names], "worst case"], rrows)
        rows_seen = list(matrix.defenders) + list(double_oracle.added_defenders if double_oracle is not None else [])
        pure = [k for k in names if k in rows_seen]
        if pure and "mixture" in robustness:
            best_pure = max(pure, key=lambda k: robustness[k]["worst_case_accuracy"])
            mix = robustness["mixture"]["worst_case_accuracy"]
            bp = robustness[best_pure]["worst_case_accuracy"]
            verdict = "above" if mix > bp else "not above"
            lines += [
                "",
                f"- Under the adaptive suite the equilibrium mixture reaches {pct(mix)}; the best pure defender "
                f"(`{best_pure}`) reaches {pct(bp)}: the mixture is **{verdict}** the best pure defender "
                f"({100.0 * (mix - bp):+.2f} points).",
                f"- Game value under the paper's protocol: {pct(equilibrium.value)}; the mixture's adaptive "
                f"worst case: {pct(mix)} (a difference of {100.0 * (mix - equilibrium.value):+.2f} points"
                + (
                    ")."
                    if _attacker_eps(config) and float(tm["eps"]) == max(_attacker_eps(config))
                    else f"; **not comparable**: the game's attackers use {_attacker_threats(config)}, "
                    f"the evaluation eps {tm['eps']})."
                ),
            ]
            if "mixture-double-oracle" in robustness:
                dm = robustness["mixture-double-oracle"]["worst_case_accuracy"]
                lines.append(
                    f"- The final double-oracle mixture reaches {pct(dm)} under the adaptive suite, next to the best "
                    f"single defender seen (`{best_pure}`, {pct(bp)}): {100.0 * (dm - bp):+.2f} points."
                )
        warn = [(k, w) for k in names for w in robustness[k].get("warnings", [])]
        if warn:
            lines += ["", "Sanity-check warnings:", ""] + [f"- `{k}`: {w}" for k, w in warn]
        lines.append("")
    else:
        lines += [
            "## 3. Adaptive evaluation",
            "",
            "Disabled in this configuration: no robustness claim can be made for randomized defenders.",
            "",
        ]
    env = environment()
    lines += [
        "## Reproduce",
        "",
        "```",
        " ".join(command) if command else reproduce_command(),
        "```",
        "",
        f"Device `{device}`; " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".",
        "",
        "Wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()) + ".",
        "",
        f"Written {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
    ]
    return "\n".join(lines)


def _double_oracle_lines(config: Any, result: Any) -> list[str]:
    """Section 2: the double-oracle (PSRO with a defense oracle) rounds, value and bounds."""
    from gametheory_defense.psro import bound_status

    do = config.double_oracle
    defense = getattr(do, "defense_oracle", None)
    status = bound_status(attack_oracle=True, defense_oracle=defense is not None)
    title = "PSRO (attack and defense oracles)" if defense else "Double oracle (best-response attacks against the current mixture)"
    lines = [
        f"## 2. {title}",
        "",
        f"Oracle attack threat model: {do.params.get('norm', 'linf')} eps {do.params.get('eps')}; "
        f"{config.data.eval_size} test images.",
        "",
        f"- Value before: {pct(result.initial_value)}; after: {pct(result.equilibrium.value)} "
        f"(stopped: {'wall-time limit' if result.stop_reason == 'callback' else result.stop_reason}).",
        f"- Attackers added by the attack oracle (`{do.attack}`): "
        + (", ".join(f"`{a}`" for a in result.added_attackers) or "none"),
        (
            f"- Defenders added by the defense oracle (`{defense}`, {do.defense.epochs} epoch(s) per call): "
            + (", ".join(f"`{a}`" for a in result.added_defenders) or "none")
            if defense
            else "- Defenders added: none (no defense oracle configured; `[double_oracle] defense_oracle` adds one)."
        ),
        f"- **Lower bound** ({status['lower_bound']}): the least any column seen concedes to the final round's "
        "mixture. It would certify the full game's value only if the attack oracle were an exact best response; "
        f"`{do.attack}` is a heuristic, so it is an estimate, which the adaptive evaluation (section 3) tests.",
        f"- **Upper bound** ({status['upper_bound']}): the most any defender seen wins against the attacker's "
        "mixture. "
        + (
            "The defense oracle trains a model, which is not an exact best response, so this is an estimate."
            if defense
            else "With no defense oracle the rows are the full set of defenders, so it is certified for this "
            "defender set."
        ),
        "",
    ]
    rows = [
        [
            str(h.iteration),
            f"{h.n_defenders}x{h.n_attackers}",
            pct(h.value),
            pct(h.lower_bound),
            pct(h.upper_bound),
            f"`{h.added_attacker}`" if h.added_attacker else "-",
            f"`{h.added_defender}`" if h.added_defender else "-",
        ]
        for h in result.history
    ]
    return lines + _table(
        ["iteration", "game size", "value", "lower bound", "upper bound", "added attacker", "added defender"], rows
    )


def write_report(path: str | Path, **kwargs: Any) -> Path:
    """Render the report and write it atomically to ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(render_report(**kwargs), encoding="utf-8")
    os.replace(tmp, path)
    return path
