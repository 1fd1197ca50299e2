"""The model card rendered for people (``model_card.md``, ``model show``, the dashboard).

The card's JSON (``model_card.json``) is written once, at registration; this renders it, with
the change record of a retrained version (:func:`render_change_record`): the data, the protocol,
the evaluation, the difference from the version it would replace, and its activations.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["DISCLAIMER", "auc_mean", "render_card", "render_change_record"]

#: Written into every model card.
DISCLAIMER = "Research use only - not for clinical use, not for diagnosis."


def auc_mean(card: Mapping[str, Any]) -> float | None:
    try:
        value = card["cv_metrics"]["auc"]["mean"]
    except (KeyError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


#: Options of the CLI commands in a card's ``reproduce`` whose value is a path.
_PATH_OPTIONS = ("--data", "--labels", "--out", "--cache", "--registry", "--notes")


def _words(command: str) -> list[str]:
    """A command line's words as a POSIX shell splits them; [] when it cannot (a lone quote)."""
    try:
        return shlex.split(command)
    except ValueError:
        return []


def _reproduce_steps(card: Mapping[str, Any]) -> list[str]:
    """The card's ``reproduce`` commands as a reader runs them on another machine.

    ``reproduce`` is one command (what ``retrain`` records: its command line with the paths as
    given) or a list of commands. Paths of the training machine become relative: the training
    data folder by its name, a path inside it relative to its parent, any other absolute path by
    its file name. A card trained on synthetic data whose steps do not make the cohort gets the
    ``synth`` step first (its seed, when not recorded, is the reader's choice).
    """
    raw = card.get("reproduce")
    commands = [str(c) for c in raw] if isinstance(raw, list | tuple) else [str(raw)]
    split = [_words(c) for c in commands]
    data = next(
        (Path(w[i + 1]) for w in split for i, t in enumerate(w[:-1]) if t == "--data"), None
    )

    def portable(value: str) -> str:
        path = Path(value)
        if not path.is_absolute() and not value.startswith("~"):
            return value
        if data is not None and data.is_absolute() and path.is_relative_to(data):
            return str(path.relative_to(data.parent))
        return path.name

    steps = []
    for command, words in zip(commands, split, strict=True):
        if not words:
            steps.append(command)  # not a command line shlex can read: shown as recorded
            continue
        moved = [
            portable(t) if i and words[i - 1] in _PATH_OPTIONS else t for i, t in enumerate(words)
        ]
        steps.append(command if moved == words else shlex.join(moved))
    synthetic = bool(card.get("synthetic_data"))
    if synthetic and not any(w[1:2] == ["synth"] for w in split) and data is not None:
        cases = (card.get("training_data") or {}).get("n")
        made = f" --cases {cases}" if isinstance(cases, int) else ""
        steps.insert(0, f"sarclym-node synth --out {shlex.quote(portable(str(data)))}{made}")
    return steps


def render_card(card: Mapping[str, Any]) -> str:
    """The model card as Markdown.

    Parameters
    ----------
    card : mapping
        Contents of ``model_card.json``.

    Returns
    -------
    str
    """
    lines = [
        f"# Model card: {card.get('name', 'sarclym-mip-cnn')} {card.get('version', '')}",
        "",
        f"**{card.get('disclaimer', DISCLAIMER)}**",
        "",
    ]
    if card.get("synthetic_data"):
        lines += ["Trained on synthetic data only (the generated FDG PET/CT cohort).", ""]
    lines += [
        "| field | value |",
        "| --- | --- |",
        f"| architecture | {card.get('arch')} |",
        f"| input size | {card.get('input_size')} |",
        f"| SUV window | {card.get('suv_window')} |",
        f"| created | {card.get('created')} |",
        f"| weights SHA-256 | `{card.get('weights_sha256')}` |",
        f"| parameters | {card.get('parameters')} |",
        "",
        "## Training data",
        "",
    ]
    data = card.get("training_data", "")
    if isinstance(data, Mapping):
        lines += [f"- {k}: {v}" for k, v in data.items()]
    else:
        lines.append(str(data))
    lines += ["", "## Hyper-parameters", ""]
    hyper = card.get("hyperparameters") or {}
    lines += [f"- {k}: {v}" for k, v in hyper.items()] or ["- (not given)"]
    lines += ["", "## Cross-validated metrics", "", *_cv_lines(card.get("cv_metrics") or {})]
    if card.get("bayes_auc") is not None:
        lines += ["", f"Bayes-optimal AUC of the training data: {_fmt(card['bayes_auc'])}."]
        auc = auc_mean(card)
        if auc is not None and card["bayes_auc"]:
            lines.append(f"Mean CV AUC / Bayes AUC: {auc / card['bayes_auc']:.3f}.")
    paper = card.get("cv_metrics_paper_size")
    if isinstance(paper, Mapping):
        lines += [
            "",
            "## At the paper's size",
            "",
            f"The same training on {paper.get('n', '?')} of the cases "
            f"({paper.get('n_lymphoma', '?')} lymphoma, the rest sarcoidosis: the size and "
            "class ratio of Aoki et al. 2023), cross-validated alone:",
            "",
            *_cv_lines(paper),
        ]
    ood = card.get("ood_reference")
    if isinstance(ood, Mapping):
        lines += ["", "## Out-of-distribution score", "", *_ood_lines(ood)]
    if card.get("reproduce"):
        steps = _reproduce_steps(card)
        lines += ["", "## Reproduce", "", "```", *steps, "```"]
    if isinstance(card.get("change_record"), Mapping):
        lines += render_change_record(card["change_record"])
    if card.get("notes"):
        lines += ["", "## Notes", "", str(card["notes"]).rstrip()]
    return "\n".join(lines) + "\n"


def _cv_lines(cv: Mapping[str, Any]) -> list[str]:
    """The cross-validation table of ``CVResult.as_card_metrics``'s fields."""
    lines: list[str] = []
    if cv:
        lines += [
            f"{cv.get('folds', '?')}-fold cross-validation on {cv.get('n', '?')} cases, "
            f"threshold {cv.get('threshold', 0.5)}; mean over folds (95% CI).",
            "",
            "| metric | mean | 95% CI |",
            "| --- | --- | --- |",
        ]
        for key in ("accuracy", "sensitivity", "specificity", "auc"):
            entry = cv.get(key)
            if isinstance(entry, Mapping):
                lo, hi = entry.get("ci95", [None, None])
                lines.append(f"| {key} | {_fmt(entry.get('mean'))} | {_fmt(lo)}-{_fmt(hi)} |")
        if "pooled_auc" in cv:
            lo, hi = cv.get("pooled_auc_ci95_bootstrap", [None, None])
            lines += [
                "",
                f"Pooled out-of-fold AUC {_fmt(cv['pooled_auc'])} "
                f"(bootstrap 95% CI {_fmt(lo)}-{_fmt(hi)}); "
                f"ECE {_fmt(cv.get('pooled_ece'))}.",
            ]
    else:
        lines.append("(none)")
    return lines


def _ood_lines(ood: Mapping[str, Any]) -> list[str]:
    """The card's ``ood_reference`` for people: what the score is and how it was calibrated."""
    percentile = ood.get("percentile")
    nth = f"{percentile:g}th" if isinstance(percentile, int | float) else "?"
    lines = [
        f"Each prediction carries its distance from the training cases: {ood.get('method', '?')} "
        f"({ood.get('feature_size', '?')} features in {ood.get('groups', '?')} groups, "
        f"{ood.get('components', '?')} components each). Above {_fmt(ood.get('threshold'))} the "
        'result says "outside the model\'s training data".',
        "",
        f"- reference fitted on {ood.get('n_fit', '?')} cases; threshold: the {nth} percentile of "
        f"{ood.get('n_calibration', '?')} held-out cases "
        f"({_fmt(ood.get('calibration_inside_fraction'))} of them inside)",
        f"- file `{ood.get('file')}`, SHA-256 `{ood.get('sha256')}`",
    ]
    for key in ("source", "seed"):
        if ood.get(key) is not None:
            lines.append(f"- {key}: {ood[key]}")
    command = ood.get("command")
    if command:
        steps = [str(c) for c in command] if isinstance(command, list | tuple) else [str(command)]
        lines += ["", "Made by:", "", "```", *steps, "```"]
    return lines


def _ci(entry: Any) -> str:
    """``0.912 (0.850-0.960)`` from ``{"mean"|"estimate", "ci95"|"low"/"high"}``."""
    if not isinstance(entry, Mapping):
        return _fmt(entry)
    value = entry.get("mean", entry.get("estimate"))
    lo, hi = entry.get("ci95") or (entry.get("low"), entry.get("high"))
    return f"{_fmt(value)} ({_fmt(lo)}-{_fmt(hi)})"


def render_change_record(record: Mapping[str, Any]) -> list[str]:
    """The ``change_record`` of a card as Markdown lines (a ``## Change record`` section).

    Parameters
    ----------
    record : mapping
        ``data`` (counts per class, scanners, study dates, pseudonymised), ``protocol`` (folds,
        hyper-parameters, seed, command), ``evaluation`` (``cv`` and, once evaluated on this
        site's cases, ``local``), ``replaces`` (the version active when this one was trained and
        both versions' metrics side by side), ``activations`` (who activated it, when).
    """
    lines = ["", "## Change record", ""]
    data = record.get("data") or {}
    lines += ["### Data", ""]
    per_class = data.get("per_class") or {}
    lines.append(
        f"- {data.get('n', '?')} studies: " + ", ".join(f"{k} {v}" for k, v in per_class.items())
    )
    scanners = data.get("scanners") or {}
    if scanners:
        lines.append("- scanners: " + "; ".join(f"{k}: {v}" for k, v in scanners.items()))
    dates = data.get("study_date_range")
    lines.append(f"- study dates: {dates[0]} to {dates[1]}" if dates else "- study dates: unknown")
    lines.append(f"- pseudonymised: {'yes' if data.get('pseudonymised') else 'no'}")
    for key in ("folder", "labels_file", "labels_sha256", "excluded"):
        if data.get(key) is not None:
            lines.append(f"- {key.replace('_', ' ')}: {data[key]}")
    protocol = record.get("protocol") or {}
    lines += ["", "### Protocol", ""]
    lines += [f"- {k}: {v}" for k, v in protocol.items() if k != "hyperparameters"]
    for k, v in (protocol.get("hyperparameters") or {}).items():
        lines.append(f"- {k}: {v}")
    evaluation = record.get("evaluation") or {}
    lines += ["", "### Evaluation", ""]
    cv = evaluation.get("cv") or {}
    if cv:
        lines.append(
            "- cross-validation: "
            + ", ".join(f"{k} {_ci(v)}" for k, v in cv.items() if isinstance(v, Mapping))
        )
    local = evaluation.get("local")
    if local:
        lines.append(
            f"- local evaluation {local.get('run_at', '')} by {local.get('run_by', '?')} on "
            f"{local.get('n_cases', '?')} cases: "
            + ", ".join(f"{k} {_ci(v)}" for k, v in (local.get("metrics") or {}).items())
            + f"; {'passed' if local.get('passed') else 'FAILED'} (report {local.get('report')}, "
            f"SHA-256 {local.get('report_sha256')})"
        )
    else:
        lines.append("- local evaluation: not yet (`sarclym-node evaluate --cases DIR`)")
    replaces = record.get("replaces") or {}
    lines += ["", "### Difference from the version it would replace", ""]
    if replaces.get("version"):
        lines += [
            f"Replaces {replaces['version']} (weights SHA-256 "
            f"`{replaces.get('weights_sha256')}`), the version active when this one was trained.",
            "",
            f"| metric | {replaces['version']} | this version |",
            "| --- | --- | --- |",
        ]
        for name, pair in (replaces.get("metrics") or {}).items():
            before, after = [*list(pair), None, None][:2]
            lines.append(f"| {name} | {_ci(before)} | {_ci(after)} |")
    else:
        lines.append("No version was active when this one was trained.")
    lines += ["", "### Activation", ""]
    activations = record.get("activations") or []
    if activations:
        for a in activations:
            forced = (
                " (forced: " + ", ".join(a.get("forced_gates") or ["?"]) + ")"
                if a.get("forced")
                else ""
            )
            lines.append(f"- activated {a.get('at')} by {a.get('by')}{forced}")
    else:
        lines.append("- not activated")
    return lines
