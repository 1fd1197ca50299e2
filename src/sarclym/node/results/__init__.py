"""Result objects of one analysed PET series: Secondary Capture and AI-results SR.

Pure builders: a :class:`~sarclym.model.inference.prediction.Prediction` and the source datasets in,
pydicom datasets out; no I/O, no clock (every date and time comes from ``created``), no random
UIDs (:mod:`sarclym.node.results.uids`). See ``docs/conformance-statement.md`` §8.1.
"""

from sarclym.node.results.render import BANNER_TEXT, Layout, Panel, hot_region, render_sc, sc_layout
from sarclym.node.results.sc import MANUFACTURER, RESEARCH_SUFFIX, build_sc
from sarclym.node.results.sr import CLASS_ORDER, RESEARCH_STATEMENT, SrKind, build_sr
from sarclym.node.results.uids import (
    NAMESPACE,
    ResultUids,
    UidKind,
    device_uid,
    result_uid,
    result_uids,
)

__all__ = [
    "BANNER_TEXT",
    "CLASS_ORDER",
    "MANUFACTURER",
    "NAMESPACE",
    "RESEARCH_STATEMENT",
    "RESEARCH_SUFFIX",
    "Layout",
    "Panel",
    "ResultUids",
    "SrKind",
    "UidKind",
    "build_sc",
    "build_sr",
    "device_uid",
    "hot_region",
    "render_sc",
    "result_uid",
    "result_uids",
    "sc_layout",
]
