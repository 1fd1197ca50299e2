"""Two hosts, two listeners, two workers, the state on PostgreSQL: every AC series once (issue 18).

Three "hosts" of ``tests/hosts.py`` (network namespaces on a private bridge, each with its own
temporary and home folder, host name and process groups): A and B each run what one listener
pod and one worker pod of the Helm chart run (``deploy/helm/sarclym-node``, several-hosts
layout): ``sarclym-node serve`` with ``service.workers: 0`` and ``storage.shared_by_serves:
true``, and ``sarclym-node worker --workers 1``; C is the scanner. In the root namespace, at the
bridge address: a real PostgreSQL (the state, ``storage.database_url``), a real redis-server
(the queue) and a real Orthanc (the PACS the results go to).

The data folder (spool, outbox, models) is one folder of the test that A and B both mount as
``storage.data_dir``: the namespaces share the kernel's file system, which stands in here for
the shared volume of a real site (NFS, CephFS, a Kubernetes ReadWriteMany volume). Nothing else
is shared: each host reaches PostgreSQL, Redis and Orthanc over the bridge.

What each test shows (a small synthetic PET/CT study each, its slices split in two halves,
every other file of each series to each listener):

- a study spread over both listeners at once: one SC and one SR in Orthanc, the AC series done
  once in the state;
- ``kill -9`` of host A (listener and worker) mid-study: the scanner sends what A did not
  confirm to B, as a second route would: one SC and one SR;
- ``kill -9`` of the host whose worker holds the series: the other host's sweeper queues it
  again after ``service.lease_seconds`` and its worker makes the results: one SC and one SR;
- PostgreSQL restarted while a study arrives: the listeners answer the instances they could not
  record with 0xA700 (out of resources, which a scanner retries), the scanner's retries are
  stored, every process keeps running, one SC and one SR, with no operator step.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread

from sarclym.node.store.audit import audit_events
from sarclym.node.store.state import StateDB
from tests.conftest import OrthancServer, stop_orthanc, wait_for_log
from tests.hosts import HostNetwork, HostsUnavailable, start_orthanc_for_hosts
from tests.integration.cases_fixtures import write_tiny_study
from tests.multihost import (
    Site,
    host_url,
    kill_host,
    results_in_orthanc,
    send,
    sender_report,
    start_pg_for_hosts,
    start_redis_for_hosts,
    storescu,
)
from tests.pg import PgServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

#: A C-STORE status a scanner sends again: 0xA7xx, out of resources.
RETRYABLE = range(0xA700, 0xA800)


@dataclass
class Infra:
    """The module's hosts and the root namespace's servers."""

    net: HostNetwork
    pg: PgServer
    redis: str  # without a database number
    orthanc: OrthancServer
    redis_dbs: Iterator[int]


@pytest.fixture(scope="module")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    folder = tmp_path_factory.mktemp("multihost")
    try:
        net = HostNetwork.create(3, folder / "hosts")
    except HostsUnavailable as exc:
        pytest.fail(f"the multi-host tests need network namespaces: {exc}", pytrace=False)
    try:
        orthanc = start_orthanc_for_hosts(folder / "orthanc", net)
        try:
            with start_pg_for_hosts(net) as pg, start_redis_for_hosts(net, folder / "redis") as r:
                yield Infra(net, pg, r, orthanc, itertools.count(1))
        finally:
            stop_orthanc(orthanc)
    finally:
        net.close()


MakeSite = Callable[..., Site]


@pytest.fixture
def make_site(infra: Infra, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MakeSite]:
    """``make_site(**service)``: this test's node (a new database and Redis database)."""

    def make(**service: object) -> Site:
        url = host_url(infra.pg, infra.net, infra.pg.create_database())
        return Site(
            name=request.node.name.removeprefix("test_")[:40],
            net=infra.net,
            data=tmp_path / "shared",
            database_url=url,
            queue_url=f"{infra.redis}/{next(infra.redis_dbs)}",
            orthanc=infra.orthanc,
            senders=[infra.net.hosts[2]],
            service=dict(service),
        )

    yield make
    for host in infra.net.hosts:  # this test's processes, whatever happened
        host.kill()


@dataclass
class Study:
    """A synthetic study split for two listeners."""

    folder: Path
    study_uid: str
    ac_series_uid: str
    halves: tuple[list[Path], list[Path]]

    @classmethod
    def write(cls, folder: Path, k: int, slices: int) -> Study:
        write_tiny_study(folder, k, matrix=16, slices=slices)
        case = folder / f"case{k:04d}"
        ac = dcmread(next((case / "PT_AC").glob("*.dcm")), stop_before_pixels=True)
        first: list[Path] = []
        second: list[Path] = []
        for series in sorted(p for p in case.iterdir() if p.is_dir()):
            for i, path in enumerate(sorted(series.glob("*.dcm"))):
                (first if i % 2 == 0 else second).append(path)
        return cls(case, str(ac.StudyInstanceUID), str(ac.SeriesInstanceUID), (first, second))

    def ac(self, files: list[Path]) -> list[Path]:
        """The AC PET files among ``files``."""
        return [f for f in files if f.parent.name == "PT_AC"]

    def in_spool(self, data: Path, files: list[Path]) -> int:
        """How many of ``files`` are in the shared spool (by SOP Instance UID, not the sender)."""
        spool = data / "spool" / self.study_uid
        return sum(1 for f in files if _spooled(spool, f))


def _spooled(spool: Path, file: Path) -> bool:
    ds = dcmread(
        file, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "SOPInstanceUID"]
    )
    return (spool / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm").exists()


def _wait_for_results(site: Site, study: Study, *, timeout: float = 90) -> dict[str, int]:
    """The study's results in Orthanc once an SR and an SC are there, and 2 s later (a
    duplicate would come then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = results_in_orthanc(site.orthanc, study.study_uid)
        if "SR" in found and ({"SC", "OT"} & found.keys()):
            time.sleep(2.0)
            return results_in_orthanc(site.orthanc, study.study_uid)
        time.sleep(0.3)
    pytest.fail(f"no SC + SR in Orthanc within {timeout} s\n{site.tails()}")


def _assert_one_sc_one_sr(found: dict[str, int]) -> None:
    assert found in ({"SC": 1, "SR": 1}, {"OT": 1, "SR": 1}), found


def _audit(site: Site, infra: Infra, series_uid: str, tmp: Path) -> tuple[str, list[str]]:
    """The series' status and its audit events (oldest first), read from PostgreSQL."""
    url = site.database_url.replace(f"@{infra.net.root_address}:", "@127.0.0.1:")
    with StateDB.in_data_dir(tmp / "reader", database_url=url) as state:
        record = state.series(series_uid)
        events = audit_events(state, series_uid=series_uid, limit=10000)
    assert record is not None
    return record.status.value, [e.event for e in reversed(events)]


def test_a_study_spread_over_two_listeners_completes_once(
    infra: Infra, make_site: MakeSite, tmp_path: Path
) -> None:
    study = Study.write(tmp_path / "study", 1, slices=32)
    site = make_site()
    a, b, c = infra.net.hosts
    ra, rb = site.start(a), site.start(b)
    site.wait_ready(ra)
    site.wait_ready(rb)

    first, second = study.halves
    to_a = storescu(c, a.address, ra.port, first, tmp_path / "to-a.log")
    to_b = storescu(c, b.address, rb.port, second, tmp_path / "to-b.log")
    assert to_a.wait(timeout=60) == 0, (tmp_path / "to-a.log").read_text()[-2000:]
    assert to_b.wait(timeout=60) == 0, (tmp_path / "to-b.log").read_text()[-2000:]

    _assert_one_sc_one_sr(_wait_for_results(site, study))
    status, events = _audit(site, infra, study.ac_series_uid, tmp_path)
    assert status == "done"
    assert events.count("complete") == 1
    assert events.count("processing") == 1
    assert events.count("done") == 1
    assert all(r.alive() == {"serve": None, "worker": None} for r in site.running.values())


def test_kill_9_of_a_listener_host_mid_study_the_rest_through_the_other(
    infra: Infra, make_site: MakeSite, tmp_path: Path
) -> None:
    study = Study.write(tmp_path / "study", 3, slices=60)
    site = make_site()
    a, b, c = infra.net.hosts
    ra, rb = site.start(a), site.start(b)
    site.wait_ready(ra)
    site.wait_ready(rb)

    first, second = study.halves
    # The scanner's first route (host A) at its pace; the second half to B at once.
    to_a = send(c, a.address, ra.port, first, tmp_path / "to-a.json", pace_s=0.03, rounds=1)
    to_b = storescu(c, b.address, rb.port, second, tmp_path / "to-b.log")
    ac_first = study.ac(first)
    deadline = time.monotonic() + 60
    while study.in_spool(site.data, ac_first) < 3:
        assert to_a.poll() is None, "the sender to A ended before A stored 3 AC instances"
        assert time.monotonic() < deadline, f"A stored no AC instance in 60 s\n{site.tails()}"
        time.sleep(0.01)
    killed = kill_host(a)
    arrived = study.in_spool(site.data, ac_first)
    assert killed
    assert 0 < arrived < len(ac_first), f"{arrived} of {len(ac_first)}: not mid-study"
    assert to_a.wait(timeout=60) == 0
    assert to_b.wait(timeout=60) == 0, (tmp_path / "to-b.log").read_text()[-2000:]
    failed = sender_report(tmp_path / "to-a.json")["failed"]
    assert failed, "host A confirmed every file before it died"
    print(
        f"host A killed with {arrived} of {len(ac_first)} of its AC instances stored; "
        f"{len(failed)} files sent again to B"
    )

    # The scanner's second route: what A did not confirm, to B.
    again = send(c, b.address, rb.port, [Path(f) for f in failed], tmp_path / "again.json")
    assert again.wait(timeout=60) == 0
    assert sender_report(tmp_path / "again.json")["failed"] == []

    _assert_one_sc_one_sr(_wait_for_results(site, study))
    status, events = _audit(site, infra, study.ac_series_uid, tmp_path)
    assert status == "done"
    assert events.count("done") == 1
    assert rb.alive() == {"serve": None, "worker": None}


def test_kill_9_of_the_worker_host_mid_processing_the_other_takes_over(
    infra: Infra, make_site: MakeSite, tmp_path: Path
) -> None:
    study = Study.write(tmp_path / "study", 5, slices=16)
    site = make_site(lease_seconds=4)
    a, b, c = infra.net.hosts
    running = {"a": site.start(a), "b": site.start(b)}
    for r in running.values():
        site.wait_ready(r)
    site.data.mkdir(parents=True, exist_ok=True)
    site.hold_file.touch()  # the first worker to take the series waits there

    first, second = study.halves
    to_a = storescu(c, a.address, running["a"].port, first, tmp_path / "to-a.log")
    to_b = storescu(c, b.address, running["b"].port, second, tmp_path / "to-b.log")
    assert to_a.wait(timeout=60) == 0
    assert to_b.wait(timeout=60) == 0
    held = site.hold_file.with_name("hold.held")
    deadline = time.monotonic() + 60
    while not held.exists():
        assert time.monotonic() < deadline, f"no worker took the series\n{site.tails()}"
        time.sleep(0.05)
    holder = next(
        label
        for label, r in running.items()
        if "hold point reached" in r.worker_log.read_text(errors="replace")
    )
    other = "b" if holder == "a" else "a"
    kill_host(running[holder].host)
    print(f"the worker of host {holder} held the series: host {holder} killed")

    _assert_one_sc_one_sr(_wait_for_results(site, study))
    status, events = _audit(site, infra, study.ac_series_uid, tmp_path)
    assert status == "done"
    assert events.count("processing") == 2  # the killed worker's, then the other's
    assert events.count("done") == 1
    wait_for_log(running[other].worker_log, '"series processed"')  # logged after the delivery
    assert '"lease expired: queued again"' in running[other].serve_log.read_text()
    assert running[other].alive() == {"serve": None, "worker": None}


def test_postgresql_restarted_while_a_study_arrives(
    infra: Infra, make_site: MakeSite, tmp_path: Path
) -> None:
    study = Study.write(tmp_path / "study", 7, slices=60)
    site = make_site(lease_seconds=10)
    a, b, c = infra.net.hosts
    ra, rb = site.start(a), site.start(b)
    site.wait_ready(ra)
    site.wait_ready(rb)

    first, second = study.halves
    to_a = send(c, a.address, ra.port, first, tmp_path / "to-a.json", pace_s=0.03)
    to_b = send(c, b.address, rb.port, second, tmp_path / "to-b.json", pace_s=0.03)
    everything = first + second
    deadline = time.monotonic() + 60
    while study.in_spool(site.data, everything) < 10:
        assert time.monotonic() < deadline, f"nothing arrived in 60 s\n{site.tails()}"
        time.sleep(0.02)
    infra.pg.restart()
    assert to_a.poll() is None or to_b.poll() is None, "the study arrived before the restart"
    assert to_a.wait(timeout=90) == 0
    assert to_b.wait(timeout=90) == 0

    seen = [s for out in ("to-a.json", "to-b.json") for s in sender_report(tmp_path / out)["seen"]]
    statuses = [status for _, _, status in seen]
    refused = [s for s in statuses if s != 0]
    print(
        f"{len(refused)} of {len(everything)} instances answered {sorted(set(map(str, refused)))}"
        " during the restart, then stored on a retry"
    )
    assert all(s == 0 or s == "association" or s in RETRYABLE for s in statuses), statuses
    for out in ("to-a.json", "to-b.json"):
        assert sender_report(tmp_path / out)["failed"] == []

    _assert_one_sc_one_sr(_wait_for_results(site, study))
    status, events = _audit(site, infra, study.ac_series_uid, tmp_path)
    assert status == "done"
    assert events.count("done") == 1
    for r in (ra, rb):
        assert r.alive() == {"serve": None, "worker": None}, r.tail()


def test_a_listener_replica_restarted_leaves_a_series_another_host_processes(
    infra: Infra, make_site: MakeSite, tmp_path: Path
) -> None:
    """A replica's start-up recovery must not queue again what a live worker elsewhere runs
    (a rolling update restarts replicas while the workers go on)."""
    study = Study.write(tmp_path / "study", 9, slices=16)
    site = make_site()  # the default lease (600 s): no re-queue by lease within this test
    a, b, c = infra.net.hosts
    running = {"a": site.start(a), "b": site.start(b)}
    for r in running.values():
        site.wait_ready(r)
    site.data.mkdir(parents=True, exist_ok=True)
    site.hold_file.touch()

    first, second = study.halves
    to_a = storescu(c, a.address, running["a"].port, first, tmp_path / "to-a.log")
    to_b = storescu(c, b.address, running["b"].port, second, tmp_path / "to-b.log")
    assert to_a.wait(timeout=60) == 0
    assert to_b.wait(timeout=60) == 0
    held = site.hold_file.with_name("hold.held")
    deadline = time.monotonic() + 60
    while not held.exists():
        assert time.monotonic() < deadline, f"no worker took the series\n{site.tails()}"
        time.sleep(0.05)
    holder = next(
        label
        for label, r in running.items()
        if "hold point reached" in r.worker_log.read_text(errors="replace")
    )
    other = running["b" if holder == "a" else "a"]
    # The other host's listener replica, while the series is held (it recovers before it listens).
    site.restart_serve(other)
    time.sleep(2.0)  # a second worker would take the series now
    status, events = _audit(site, infra, study.ac_series_uid, tmp_path)
    assert (status, events.count("processing")) == ("processing", 1), events
    held.unlink()  # the holder goes on

    _assert_one_sc_one_sr(_wait_for_results(site, study))
    status, events = _audit(site, infra, study.ac_series_uid, tmp_path)
    assert status == "done"
    assert events.count("processing") == 1
    assert events.count("done") == 1
