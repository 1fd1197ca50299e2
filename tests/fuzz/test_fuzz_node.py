"""Issue 13's fuzz suite: every category of broken sender and attacker against a running ``serve``.

One ``sarclym-node serve`` process for the whole module (:class:`~tests.fuzz.harness.FuzzNode`),
on loopback ports; every generator is seeded with :data:`SEED` and every count and wait is
bounded. The tests run in file order, one per category:

1. fuzzed data sets over C-STORE (truncations, flipped header bytes, wrong VRs and lengths,
   removed UIDs): 0x0000 only for data sets that parse to their end and are consistent
   (:func:`~tests.fuzz.datasets.judge`), 0xC2xx/0xA9xx otherwise; valid ones stored;
2. a SOP class sent on another SOP class's presentation context: 0xA900;
3. an unknown SOP class: 0x0122 for that C-STORE, and the association stays usable;
4. deflate bombs: a failure status (0xA7xx or 0xC2xx), memory bounded;
5. raw PDUs: P-DATA over max_pdu and a 4 GiB length header aborted without buffering, an even
   presentation context ID rejected, silent and truncated association requests closed after
   ARTIM, an allowed sender storing while 50 silent connections are held open (the silent TLS
   client needs a node that listens with TLS: it is not run here);
6. bad STOW-RS requests: PS3.18 statuses (400, 409, 413, 415), never a hang;
7. afterwards, a normal synthetic study sent by DCMTK storescu gets its SC and SR in the folder
   destination, every instance answered Success while fuzzing is still kept as sent, and no
   PHI reached the node's log.

A valid instance (an unchanged control, a changed pixel value, a PET after an unknown SOP class on
the same association...) must be answered 0x0000 in its own category and kept as sent: nothing
valid lost.

After each category the node must answer C-ECHO and ``GET /healthz``, its memory must stay within
the category's bound, its log must hold no uncaught traceback, and it must have kept exactly the
instances it answered Success for (:func:`~tests.fuzz.harness.finish`). Each category prints one
summary line: cases, statuses, peak memory, C-ECHO, /healthz.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.conftest import require_tool
from tests.fuzz.datasets import (
    CSA_NON_IMAGE,
    CT_SOP,
    PET_SOP,
    SC_SOP,
    deflate,
    deflate_bomb,
    encoded,
    fuzz_uid,
    instance,
    mutants,
    non_image,
)
from tests.fuzz.dul import (
    DEFLATED,
    IMPLICIT_LE,
    P_DATA_TF,
    VERIFICATION,
    Outcome,
    Proposal,
    RawAssociation,
    Refused,
    associate_rq,
    pdu,
)
from tests.fuzz.harness import (
    MEMORY_BUDGET_MB,
    STOW_TOKEN,
    Category,
    FuzzNode,
    Ledger,
    emit,
    finish,
    storescu,
)
from tests.fuzz.senders import Session, SilentCrowd, silent_after
from tests.fuzz.stow import HttpOutcome, StowCase, exchange, stow_cases
from tests.phi import assert_no_phi

pytestmark = pytest.mark.integration

#: The seed of every generator: another value replays another campaign of the same size.
SEED = 1301
#: Fuzzed data sets per mutation (category 1).
COUNTS = {
    "control": 10,
    "pixel-flip": 10,
    "truncate": 60,
    "header-flip": 40,
    "wrong-vr": 20,
    "wrong-length": 20,
    "no-uid": 10,
}
BOMB_MIB = 1024  # the bomb: about 1 MB on the wire, 1 GiB inflated
SILENT_CONNECTIONS = 50
ARTIM_MARGIN_S = 5.0  # on two busy cores
C2XX, A7XX, A9XX = range(0xC200, 0xC300), range(0xA700, 0xA800), range(0xA900, 0xAA00)


def _status_in(outcome: Outcome, *families: range) -> bool:
    return outcome.startswith("0x") and any(int(outcome, 16) in f for f in families)


@dataclass
class Fuzz:
    """What the categories share: the node, the normal study, every category's ledger."""

    node: FuzzNode
    study: Path
    config: pytest.Config
    tmp: Path
    ledgers: list[Ledger] = field(default_factory=list)

    def category(self, title: str, *, memory_budget_mb: float = MEMORY_BUDGET_MB) -> Category:
        category = Category(title, self.node, memory_budget_mb=memory_budget_mb).begin()
        self.ledgers.append(category.ledger)
        return category


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[Fuzz]:
    """The node under fuzz (one ``serve`` for the module) and a normal study for the end."""
    require_tool("storescu")
    require_tool("echoscu")
    started = time.monotonic()
    tmp = tmp_path_factory.mktemp("fuzz")
    node = FuzzNode(tmp)
    command = [sys.executable, "-m", "sarclym.node.cli", "synth", "--out", str(tmp / "study")]
    synth = subprocess.Popen(
        [*command, "--cases", "1", "--seed", "44", "--mip-series", "yes"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        node.start()
        _, err = synth.communicate(timeout=300)
        assert synth.returncode == 0, err.decode()[-2000:]
        keys = ", ".join(f"{k}={v}" for k, v in node.optional.items()) or "none of them"
        emit(
            pytestconfig,
            f"\n[fuzz] serve pid {node.pid}, DICOM :{node.port}, HTTP :{node.http_port}, "
            f"rss {node.rss_mb():.0f} MB; issue-13 limits set: {keys}; seed {SEED}",
        )
        yield Fuzz(node, tmp / "study" / "case0001", pytestconfig, tmp)
    finally:
        if synth.poll() is None:
            synth.kill()
            synth.wait(timeout=10)
        code = node.stop()
        emit(
            pytestconfig,
            f"\n[fuzz] suite {time.monotonic() - started:.1f} s (issue: under 180 s); "
            f"node exit code {code}",
        )


# -- 1 ----------------------------------------------------------------------------------------


def test_1_fuzzed_data_sets(fuzz: Fuzz) -> None:
    category = fuzz.category("1 fuzzed data sets (C-STORE)")
    session = Session(fuzz.node.port, [Proposal(1, PET_SOP)])
    try:
        for case in mutants(SEED, COUNTS):
            outcome = session.c_store(1, case.sop_class, case.sop_instance, case.data)
            success = outcome == "0x0000"
            if case.must_store:
                ok, expected = success, "0x0000 (valid data set)"
            elif case.problem is not None:
                ok = _status_in(outcome, C2XX, A9XX)
                expected = f"0xC2xx/0xA9xx ({case.problem})"
            else:  # parses to its end and is consistent, but a header was changed
                ok = success or _status_in(outcome, C2XX, A9XX)
                expected = "0x0000 or 0xC2xx/0xA9xx"
            category.add(f"{case.kind} {case.name}", outcome, ok, expected)
            category.ledger.record(
                case.sop_instance, success, case.data, must_store=case.must_store
            )
            if session.stalled:
                category.add("the rest", "not sent", False, "answers", "the node stopped answering")
                break
    finally:
        session.close()
    finish(category, fuzz.config)


# -- 2 ----------------------------------------------------------------------------------------


def test_2_sop_class_on_another_context(fuzz: Fuzz) -> None:
    category = fuzz.category("2 SOP class vs presentation context")
    contexts = {PET_SOP: 1, CT_SOP: 3, SC_SOP: 5}
    session = Session(fuzz.node.port, [Proposal(i, uid) for uid, i in contexts.items()])
    kinds = {"PT": PET_SOP, "CT": CT_SOP, "SC": SC_SOP}
    # (the data set's kind, the request's Affected SOP Class, the context's class, valid)
    plan = [
        ("PT", "PT", "CT", False),
        ("CT", "CT", "PT", False),
        ("SC", "SC", "PT", False),
        ("PT", "CT", "CT", False),  # the request names the context's class, the data set not
        ("PT", "PT", "PT", True),
        ("CT", "CT", "CT", True),
    ]
    try:
        for k in range(3):
            for kind, affected, context, valid in plan:
                name = f"{kind} as {affected} on the {context} context #{k}"
                ds = instance(f"ctx-{SEED}-{name}", kind=kind, series=f"ctx-{kind}", index=k + 1)
                data = encoded(ds)
                uid = str(ds.SOPInstanceUID)
                outcome = session.c_store(contexts[kinds[context]], kinds[affected], uid, data)
                expected = "0x0000" if valid else "0xA900"
                category.add(name, outcome, outcome == expected, expected)
                category.ledger.record(uid, outcome == "0x0000", data, must_store=valid)
                if session.stalled:
                    break
    finally:
        session.close()
    finish(category, fuzz.config)


# -- 3 ----------------------------------------------------------------------------------------


def test_3_unknown_sop_class(fuzz: Fuzz) -> None:
    category = fuzz.category("3 unknown SOP class")
    proposals = [
        Proposal(1, PET_SOP),
        Proposal(3, fuzz_uid("unknown SOP class", "proposed")),
        Proposal(5, VERIFICATION, (IMPLICIT_LE,)),
    ]
    for k in range(3):
        unknown = fuzz_uid("unknown SOP class", k)
        with RawAssociation(fuzz.node.port) as assoc:
            try:
                accepted = assoc.associate(proposals)
            except Refused as refused:
                category.add(f"associate #{k}", refused.outcome, False, "A-ASSOCIATE-AC")
                continue
            refused_cx = accepted.refused.get(3)
            category.add(
                f"unknown class proposed #{k}",
                "context accepted" if refused_cx is None else f"context refused ({refused_cx})",
                refused_cx == 3,
                "context refused (3: abstract syntax not supported), association kept",
            )
            ds = instance(f"unknown-{SEED}-{k}", series="unknown", index=k + 1)
            ds.SOPClassUID = unknown
            data = encoded(ds)
            outcome = assoc.c_store(1, unknown, str(ds.SOPInstanceUID), data)
            category.add(f"C-STORE of {unknown} #{k}", outcome, outcome == "0x0122", "0x0122")
            category.ledger.record(
                str(ds.SOPInstanceUID), outcome == "0x0000", data, must_store=False
            )
            valid = instance(f"unknown-then-valid-{SEED}-{k}", series="unknown", index=10 + k)
            data = encoded(valid)
            outcome = assoc.c_store(1, PET_SOP, str(valid.SOPInstanceUID), data)
            category.add(
                f"valid PET next, same association #{k}", outcome, outcome == "0x0000", "0x0000"
            )
            category.ledger.record(
                str(valid.SOPInstanceUID), outcome == "0x0000", data, must_store=True
            )
            outcome = assoc.c_echo(5)
            category.add(
                f"C-ECHO next, same association #{k}", outcome, outcome == "0x0000", "0x0000"
            )
            assoc.release()
    # A private SOP class the node accepts by design is stored, on the same association as PET.
    with RawAssociation(fuzz.node.port) as assoc:
        assoc.associate([Proposal(1, PET_SOP), Proposal(3, CSA_NON_IMAGE)])
        for context_id, ds in (
            (3, non_image(f"csa-{SEED}", CSA_NON_IMAGE)),
            (1, instance(f"after-csa-{SEED}", series="unknown", index=20)),
        ):
            data, uid = encoded(ds), str(ds.SOPInstanceUID)
            outcome = assoc.c_store(context_id, str(ds.SOPClassUID), uid, data)
            name = "Siemens CSA Non-Image (private, accepted)" if context_id == 3 else "PET next"
            category.add(name, outcome, outcome == "0x0000", "0x0000")
            category.ledger.record(uid, outcome == "0x0000", data, must_store=True)
        assoc.release()
    finish(category, fuzz.config)


# -- 4 ----------------------------------------------------------------------------------------


def test_4_deflate_bomb(fuzz: Fuzz) -> None:
    category = fuzz.category("4 deflate bomb", memory_budget_mb=BOMB_MIB / 4)
    session = Session(fuzz.node.port, [Proposal(1, PET_SOP, (DEFLATED,))], timeout=60.0)
    try:
        ds = instance(f"deflated-{SEED}", series="deflated")
        data = deflate(encoded(ds))
        outcome = session.c_store(1, PET_SOP, str(ds.SOPInstanceUID), data)
        category.add("deflated valid instance", outcome, outcome == "0x0000", "0x0000")
        category.ledger.record(str(ds.SOPInstanceUID), outcome == "0x0000", data, must_store=True)
        for consistent in (False, True):
            header = "header consistent" if consistent else "header says 32x32"
            uid, bomb = deflate_bomb(
                f"bomb-{SEED}-{consistent}", inflated_mib=BOMB_MIB, consistent=consistent
            )
            rss = category.reset_peak()
            outcome = session.c_store(1, PET_SOP, uid, bomb)
            grown = fuzz.node.peak_mb() - rss
            category.add(
                f"{len(bomb) / 1e6:.1f} MB inflating to {BOMB_MIB} MiB, {header}",
                outcome,
                _status_in(outcome, A7XX, C2XX) and grown < BOMB_MIB / 4,
                f"0xA7xx/0xC2xx, memory +< {BOMB_MIB // 4} MB",
                f"memory +{grown:.0f} MB",
            )
            category.ledger.record(uid, outcome == "0x0000", bomb, must_store=False)
    finally:
        session.close()
    finish(category, fuzz.config)


# -- 5 ----------------------------------------------------------------------------------------


def _oversized_p_data(fuzz: Fuzz, category: Category) -> None:
    """A whole 8 MiB data set in one P-DATA-TF PDU, against the node's max_pdu."""
    ds = instance(f"oversized-{SEED}", series="pdu", rows=2048, columns=2048)
    data = encoded(ds)
    uid = str(ds.SOPInstanceUID)
    rss = category.reset_peak()
    with RawAssociation(fuzz.node.port) as assoc:
        try:
            max_pdu = assoc.associate([Proposal(1, PET_SOP)]).peer_max_pdu
            outcome = assoc.c_store(1, PET_SOP, uid, data, max_pdv=len(data))
        except Refused as refused:
            max_pdu, outcome = 0, f"association {refused.outcome}"
    grown = fuzz.node.peak_mb() - rss
    category.add(
        f"P-DATA-TF of {len(data) >> 20} MiB (max_pdu {max_pdu})",
        outcome,
        outcome in ("abort", "closed"),
        "association aborted",
        f"memory +{grown:.0f} MB",
    )
    category.ledger.record(uid, outcome == "0x0000", data, must_store=False)


def _length_4_gib(fuzz: Fuzz, category: Category) -> None:
    """A P-DATA-TF header claiming 4 GiB, then 128 MiB: aborted, not buffered."""
    streamed = 0
    rss = category.reset_peak()
    with RawAssociation(fuzz.node.port, timeout=5.0) as assoc:
        try:
            assoc.associate([Proposal(1, PET_SOP)])
        except Refused as refused:
            outcome = f"association {refused.outcome}"
        else:
            chunk = bytes(1 << 20)
            if assoc.send(pdu(P_DATA_TF, b"", declared_length=0xFFFFFFFF)):
                while streamed < 128 << 20 and assoc.send(chunk):
                    streamed += len(chunk)
            outcome, _ = assoc.wait_closed(timeout=3.0)
    grown = fuzz.node.peak_mb() - rss
    category.add(
        "P-DATA-TF length 0xFFFFFFFF",
        outcome,
        outcome in ("abort", "closed") and grown < 64,
        "association aborted, memory +< 64 MB",
        f"{streamed >> 20} MiB sent before the node stopped reading, memory +{grown:.0f} MB",
    )


def _even_context_id(fuzz: Fuzz, category: Category) -> None:
    for ids in ((2,), (1, 4), (254,)):
        proposals = [Proposal(i, PET_SOP if i % 2 else CT_SOP) for i in ids]
        with RawAssociation(fuzz.node.port, timeout=5.0) as assoc:
            try:
                assoc.associate(proposals)
                outcome = "ac"
            except Refused as refused:
                outcome = refused.outcome
        category.expect(
            f"A-ASSOCIATE-RQ with presentation context IDs {ids}",
            outcome,
            lambda o: o in ("rj", "abort"),
            "A-ASSOCIATE-RJ or A-ABORT",
        )


def _sender_among_silent_crowd(fuzz: Fuzz, category: Category) -> None:
    datasets = [instance(f"crowd-{SEED}-{k}", series="crowd", index=k + 1) for k in range(20)]
    folder = fuzz.tmp / "crowd"
    folder.mkdir()
    files = []
    for k, ds in enumerate(datasets):
        files.append(folder / f"{k:02d}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    with SilentCrowd(fuzz.node.port, SILENT_CONNECTIONS) as crowd:
        start = time.monotonic()
        code, err = storescu(fuzz.node.port, files, timeout=90)
        seconds = time.monotonic() - start
    category.add(
        f"storescu, {len(files)} instances, {SILENT_CONNECTIONS} silent connections held open",
        f"rc={code}",
        code == 0,
        "rc=0 (stored)",
        f"{seconds:.1f} s; silent connections opened {crowd.opened}, refused {crowd.refused}; "
        + err[-300:],
    )
    for ds in datasets:
        category.ledger.record(str(ds.SOPInstanceUID), code == 0, b"", must_store=True)


def test_5_raw_pdus(fuzz: Fuzz) -> None:
    category = fuzz.category("5 raw PDUs and connections")
    _oversized_p_data(fuzz, category)
    _length_4_gib(fuzz, category)
    _even_context_id(fuzz, category)
    bound = fuzz.node.artim_s + ARTIM_MARGIN_S
    rq = associate_rq([Proposal(1, PET_SOP)])
    silent: dict[str, bytes] = {f"silent connection #{k}": b"" for k in range(3)}
    silent["A-ASSOCIATE-RQ cut at byte 10"] = rq[:10]
    silent[f"A-ASSOCIATE-RQ cut at byte {len(rq) - 7}"] = rq[:-7]
    silent["A-ASSOCIATE-RQ length 0xFFFFFFF0"] = associate_rq(
        [Proposal(1, PET_SOP)], declared_length=0xFFFFFFF0
    )
    results: dict[str, tuple[Outcome, float]] = {}

    def watch(name: str, first: bytes) -> None:
        try:
            results[name] = silent_after(fuzz.node.port, first, bound)
        except OSError as exc:
            results[name] = (f"error {type(exc).__name__}", 0.0)

    threads = [threading.Thread(target=watch, args=item, daemon=True) for item in silent.items()]
    for thread in threads:
        thread.start()
    _sender_among_silent_crowd(fuzz, category)
    for thread in threads:
        thread.join(timeout=bound + 10)
    for name in silent:
        outcome, seconds = results.get(name, ("not finished", 0.0))
        category.add(
            name,
            outcome,
            outcome in ("closed", "abort", "rj"),
            f"closed within ARTIM {fuzz.node.artim_s:g} s + {ARTIM_MARGIN_S:g} s",
            f"after {seconds:.1f} s",
        )
    emit(
        fuzz.config,
        "\n[fuzz] 5: silent TLS client not run: the node under fuzz listens without TLS "
        "(a TLS test belongs with the listener's TLS tests)",
    )
    finish(category, fuzz.config)


# -- 6 ----------------------------------------------------------------------------------------


def _record_stow(category: Category, case: StowCase, outcome: HttpOutcome) -> None:
    detail = f"{outcome.seconds:.1f} s"
    ok = case.accepts(outcome)
    reply = outcome.json()
    if outcome.status == 409 and not (isinstance(reply, dict) and "00081198" in reply):
        ok, detail = False, detail + ", no FailedSOPSequence (0008,1198)"
    category.add(case.name, outcome.label, ok, " or ".join(map(str, sorted(case.expected))), detail)
    if case.sop_instance is not None:
        stored = isinstance(reply, dict) and case.sop_instance in str(reply.get("00081199", ""))
        category.ledger.record(case.sop_instance, stored, case.sent, must_store=case.must_store)


def test_6_bad_stow_rs(fuzz: Fuzz) -> None:
    category = fuzz.category("6 bad STOW-RS requests")
    port = fuzz.node.http_port
    complete, incomplete = stow_cases(SEED, STOW_TOKEN)
    hang_bound = fuzz.node.http_read_timeout_s + 10
    held: dict[str, HttpOutcome] = {}

    def hold(case: StowCase) -> None:
        try:
            held[case.name] = exchange(port, case.request, timeout=hang_bound)
        except OSError as exc:
            held[case.name] = HttpOutcome(None, b"", f"error {type(exc).__name__}", 0.0)

    threads = [threading.Thread(target=hold, args=(case,), daemon=True) for case in incomplete]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # the incomplete requests are in flight from here on
    for case in complete:
        try:
            outcome = exchange(port, case.request, timeout=5)
        except OSError as exc:
            outcome = HttpOutcome(None, b"", f"error {type(exc).__name__}", 0.0)
        _record_stow(category, case, outcome)
    healthy = fuzz.node.healthz()
    category.add(
        f"GET /healthz while {len(incomplete)} bodies are held back",
        "http 200" if healthy else "no 200",
        healthy,
        "200",
    )
    for thread in threads:
        thread.join(timeout=hang_bound + 5)
    for case in incomplete:
        outcome = held.get(case.name, HttpOutcome(None, b"", "not finished", hang_bound))
        _record_stow(category, case, outcome)
    finish(category, fuzz.config)


# -- 7 ----------------------------------------------------------------------------------------


def test_7_normal_study_afterwards(fuzz: Fuzz) -> None:
    category = fuzz.category("7 a normal study afterwards", memory_budget_mb=float("inf"))
    node = fuzz.node
    files = sorted(fuzz.study.rglob("*.dcm"))
    code, err = storescu(node.port, files, timeout=300)
    category.add(
        f"storescu, the whole study ({len(files)} files)",
        f"rc={code}",
        code == 0,
        "rc=0",
        err[-300:],
    )
    deadline = time.monotonic() + 120
    while len(node.results()) < 2 and time.monotonic() < deadline and node.running():
        time.sleep(0.5)
    source = dcmread(next((fuzz.study / "PT_AC").glob("*.dcm")), stop_before_pixels=True)
    results = [dcmread(p, stop_before_pixels=True) for p in node.results()]
    modalities = sorted(str(ds.Modality) for ds in results)
    category.add(
        "SC and SR in the folder destination",
        "+".join(modalities) or "nothing",
        modalities in (["OT", "SR"], ["SC", "SR"])
        and {ds.StudyInstanceUID for ds in results} == {source.StudyInstanceUID},
        "SC+SR in the source study",
    )
    merged = Ledger()
    for ledger in fuzz.ledgers:
        merged.merge(ledger)
    lost = merged.lost(node)
    category.add(
        f"the {len(merged.stored)} instances answered Success while fuzzing",
        f"{len(merged.stored) - len(lost)} still kept as sent",
        not lost,
        "all kept",
        f"{len(merged.must_store & set(merged.stored))} of {len(merged.must_store)} valid ones "
        "were answered Success",
    )
    log = node.log_text()
    try:
        assert_no_phi(log)
        for value in (
            str(source.PatientName),
            *str(source.PatientName).split("^"),
            source.PatientID,
        ):
            assert len(value) < 3 or value not in log, "the normal study's patient reached the log"
        leak = "0 hits"
    except AssertionError as exc:
        leak = str(exc).splitlines()[0]
    category.add("PHI in the node's log", leak, leak == "0 hits", "0 hits")
    finish(category, fuzz.config, also=lost)
