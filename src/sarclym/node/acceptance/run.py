"""``sarclym-node evaluate`` without the command line: score, compare, report, record.

Dependencies come in as arguments (loaded models, the state database, the configuration's
``acceptance`` section), so a test or the benchmark runs the same code as the command.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sarclym.model.imaging.selection import SelectionRules
from sarclym.model.training.evaluation import DeLongResult
from sarclym.node.acceptance.caseset import CaseSet, case_set_fingerprint
from sarclym.node.acceptance.report import ReportFiles, write_report
from sarclym.node.acceptance.scoring import (
    VersionScores,
    compare_versions,
    evaluate_scores,
    score_version,
)
from sarclym.node.config.acceptance import AcceptanceConfig
from sarclym.node.store.evaluations import EvaluationRecord, record_evaluation
from sarclym.node.store.state import StateDB

__all__ = ["Evaluation", "os_user", "run_evaluation"]


def os_user() -> str:
    """The OS user running this process (its uid when the name cannot be found)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, no LOGNAME/USER (a bare container)
        return f"uid {os.getuid()}"


@dataclass(frozen=True)
class Evaluation:
    """What one ``evaluate`` run made."""

    versions: list[VersionScores]
    comparison: DeLongResult | None
    files: ReportFiles
    report: dict[str, Any]

    @property
    def passed(self) -> bool:
        """Every version passed every criterion."""
        return all(v.passed for v in self.versions)


def run_evaluation(
    models: Sequence[Any],
    cases: CaseSet,
    *,
    cache_dir: Path,
    out: Path,
    acceptance: AcceptanceConfig,
    rules: SelectionRules,
    state: StateDB | None,
    device: str = "cpu",
    run_by: str | None = None,
    now: dt.datetime | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Evaluation:
    """Evaluate each loaded model on ``cases``, write the report, record it in ``state``.

    Parameters
    ----------
    models
        :class:`~sarclym.model.inference.registry.LoadedModel` of each version, in report
        order (the DeLong comparison, with exactly two, is first minus second).
    state
        The node's state database: one ``evaluations`` row and one ``evaluated`` audit event
        per version; ``None`` records nothing (the benchmark).
    progress
        Called with (version, done, total) while inputs are made.
    """
    user = run_by or os_user()
    when = now or dt.datetime.now(dt.UTC).replace(microsecond=0)
    scored: list[VersionScores] = []
    for loaded in models:
        on_study = None
        if progress is not None:

            def on_study(done: int, total: int, version: str = loaded.version) -> None:
                progress(version, done, total)

        scores = score_version(
            loaded, cases, cache_dir, rules=rules, device=device, progress=on_study
        )
        scored.append(evaluate_scores(scores, acceptance))
    comparison = compare_versions(scored[0], scored[1]) if len(scored) == 2 else None
    files, report = write_report(out, scored, cases, comparison, run_by=user, run_at=when)
    if state is not None:
        for v, figures in zip(scored, report["models"], strict=True):
            record_evaluation(
                state,
                EvaluationRecord(
                    model_version=v.version,
                    weights_sha256=v.weights_sha256,
                    case_set=case_set_fingerprint({u: cases.labels[u] for u in v.study_uids}),
                    n_cases=len(v.study_uids),
                    n_refused=len(v.refused) + v.n_unmatched,
                    metrics={k: figures[k] for k in ("metrics", "ece", "refusal_rate", "criteria")},
                    passed=v.passed,
                    report_path=str(files.json),
                    report_sha256=files.json_sha256,
                    run_by=user,
                    run_at=when.timestamp(),
                ),
            )
    return Evaluation(scored, comparison, files, report)
