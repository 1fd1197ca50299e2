"""What the worker tells monitoring about each series, and what monitoring tells the worker.

:class:`Monitor` is the worker's one handle on monitoring: :meth:`Monitor.review` says whether
the version about to score is under review (and lifts a review the registry's re-activation
ended); :meth:`Monitor.record` records an analysed series (the keyed hash of its accession
number, its input facts, the drift reference and figures) and re-applies the stop rule when its
study already has a final diagnosis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from sarclym.node.config import Config
from sarclym.node.monitoring import drift, review
from sarclym.node.store import feedback as store
from sarclym.node.store.audit import process_actor
from sarclym.node.store.state import StateDB

__all__ = ["DRIFT", "REFERENCE", "Monitor", "drift_reference"]

log = structlog.get_logger(__name__)

#: ``monitoring_figures`` kinds.
REFERENCE, DRIFT = "reference", "drift"


def drift_reference(
    state: StateDB, config: Config, version: str, card: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The drift reference of ``version``: the card's ``input_profile``, else the stored profile
    of its first ``monitoring.reference_results`` scored series (made and stored once there are
    that many); None while there are fewer."""
    profile = (card or {}).get("input_profile")
    if isinstance(profile, Mapping):
        return {"source": "training cases (model card)", **dict(profile)}
    stored = store.figures(state, REFERENCE).get(version)
    if stored is not None:
        return stored
    wanted = config.monitoring.reference_results
    first = [f for f in store.input_facts(state, model_version=version) if f.outcome == "scored"]
    if len(first) < wanted:
        return None
    source = f"first {wanted} results of {version} (its model card has no input_profile)"
    made = drift.profile_facts(first[:wanted], source)
    store.save_figures(state, version, REFERENCE, made)
    return made


class Monitor:
    """Monitoring's side of the worker.

    Parameters
    ----------
    config
        ``monitoring`` and ``acceptance``; ``storage.data_dir`` for the node's key.
    state
        The state database.
    """

    def __init__(self, config: Config, state: StateDB) -> None:
        self.config = config
        self.state = state
        self._hasher: Any = None

    def _hash(self, accession: str) -> str | None:
        if not accession.strip():
            return None
        if self._hasher is None:
            key = store.ensure_node_key(store.node_key_path(self.config.storage.data_dir))
            self._hasher = store.accession_hasher(key)
        return str(self._hasher("AccessionNumber", accession))

    def review(self, version: str, *, activated_at: float | None) -> store.ModelReview | None:
        """The version's review if it is under review now (after lifting one that
        re-activation ended; ``activated_at``: when the registry last activated it)."""
        if review.lift_if_reactivated(self.state, version, activated_at, actor=process_actor()):
            log.warning("model review lifted: the version was activated again", version=version)
        return review.review_of(self.state, version)

    def record(
        self,
        *,
        series_uid: str,
        study_uid: str,
        header: Any,
        outcome: str,
        model_version: str | None,
        conversion: Any = None,
        suv_max: float | None = None,
        card: Mapping[str, Any] | None = None,
    ) -> None:
        """Record one analysed series (``outcome``: scored, refused, not_scored).

        Never raises: monitoring must not fail a result that is made. A failure is logged.
        """
        try:
            self._record(
                series_uid, study_uid, header, outcome, model_version, conversion, suv_max, card
            )
        except Exception as exc:  # the result stands without its monitoring facts
            log.warning(
                "monitoring facts not recorded",
                series_instance_uid=series_uid,
                error=f"{type(exc).__name__}: {exc}",
            )

    def _record(
        self,
        series_uid: str,
        study_uid: str,
        header: Any,
        outcome: str,
        model_version: str | None,
        conversion: Any,
        suv_max: float | None,
        card: Mapping[str, Any] | None,
    ) -> None:
        facts: dict[str, Any] = {}
        if header is not None:
            accession = header.get("AccessionNumber")
            store.record_analysed_study(
                self.state, study_uid, self._hash("" if accession is None else str(accession))
            )
            facts = drift.input_facts_of(header, conversion, suv_max)
        store.record_input_facts(
            self.state,
            series_uid,
            study_uid,
            outcome=outcome,
            model_version=model_version,
            facts=facts,
        )
        if model_version is None:
            return
        reference = drift_reference(self.state, self.config, model_version, card)
        window = store.input_facts(
            self.state, model_version=model_version, latest=self.config.monitoring.drift_window
        )
        if reference is not None:
            studies = store.pet_study_outcomes(
                self.state, latest=self.config.monitoring.drift_window
            )
            report = drift.compare(reference, window, studies=studies)
            store.save_figures(self.state, model_version, DRIFT, report.as_dict())
        if outcome == "scored" and store.feedback_for(self.state, study_uid) is not None:
            review.check(self.state, self.config, actor=process_actor(), versions=[model_version])
