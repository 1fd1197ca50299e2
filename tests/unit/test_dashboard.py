"""The dashboard: login, roles, CSRF, cookie flags, the admin token file, the pages.

A real node (``Node``, no worker threads) serves the dashboard on a free port; its state.db is
filled through the real APIs (``StateDB.record_instance``/``mark_series``, ``write_results``,
``DeliveryLedger.enqueue``/``run_due``) with one study: a processed PET series whose result went
to one destination and into the dead letter of another, a skipped CT and a failed series.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image
from pydicom import dcmread

from sarclym.node.cli import EXIT_BAD_INPUT, EXIT_OK, main
from sarclym.node.config import Config, load_config
from sarclym.node.errors import ConfigError
from sarclym.node.http.auth import (
    Authenticator,
    Principal,
    ensure_admin_token,
    hash_token,
)
from sarclym.node.http.views import markdown_to_html
from sarclym.node.service import Node
from sarclym.node.store.audit import audit_events
from sarclym.node.store.layout import DataLayout
from sarclym.node.store.records import DeliveryState
from sarclym.node.store.state import ReceivedInstance, SeriesStatus
from sarclym.node.worker.processor import write_results
from sarclym.node.worker.thumbnail import THUMBNAIL_SIZE, write_thumbnail
from tests.conftest import free_port
from tests.phi import assert_no_phi
from tests.results_fixtures import PHI, SERIES_UID, STUDY_UID, make_prediction
from tests.shipped import SHIPPED
from tests.unit.test_delivery import FakeDestination, permanent

ADMIN_TOKEN = "admin-token-for-the-tests-0123456789abcdef"
VIEWER_TOKEN = "viewer-token-for-the-tests-0123456789abcde"
CT_UID = f"{STUDY_UID}.3"
FAILED_UID = f"{STUDY_UID}.4"
RESULT_ID = f"{SERIES_UID}/0.0.test"
RESEARCH = "Research use only - not for diagnosis"


def _config(tmp_path: Path, extra: dict[str, str] | None = None, **dashboard: object) -> Config:
    users = [
        {"name": "alice", "role": "admin", "token_sha256": hash_token(ADMIN_TOKEN)},
        {"name": "victor", "role": "viewer", "token_sha256": hash_token(VIEWER_TOKEN)},
    ]
    env = {
        "SARCLYM__STORAGE__DATA_DIR": str(tmp_path / "var"),
        "SARCLYM__STORAGE__MIN_FREE_MB": "0",
        "SARCLYM__SERVICE__LOCAL_ORTHANC_URL": "null",
        "SARCLYM__SERVICE__WORKERS": "0",
        "SARCLYM__SERVICE__HTTP_PORT": str(free_port()),
        "SARCLYM__LISTENER__HOST": "127.0.0.1",
        "SARCLYM__LISTENER__PORT": str(free_port()),
        "SARCLYM__DASHBOARD__USERS": yaml.safe_dump(users, default_flow_style=True),
    }
    env.update({f"SARCLYM__DASHBOARD__{k.upper()}": str(v) for k, v in dashboard.items()})
    return load_config(environ={**env, **(extra or {})})


def _instance(series: str, k: int, modality: str, expected: int | None) -> ReceivedInstance:
    return ReceivedInstance(
        sop_instance_uid=f"{series}.{k}",
        series_uid=series,
        study_uid=STUDY_UID,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.128",
        transfer_syntax="1.2.840.10008.1.2.1",
        path=f"spool/{series}.{k}.dcm",
        size=1000,
        modality=modality,
        image_index=k,
        expected_count=expected,
        calling_ae="STORESCU",
    )


def _fill(node: Node) -> None:
    """One study as the node would have handled it, through the real state and ledger APIs."""
    state, data_dir = node.state, node.config.storage.data_dir
    for k in (1, 2, 3):
        state.record_instance(_instance(SERIES_UID, k, "PT", 3))
        state.record_instance(_instance(CT_UID, k, "CT", None))
    state.record_instance(_instance(FAILED_UID, 1, "PT", 1))
    state.mark_series(CT_UID, SeriesStatus.COMPLETE, "quiet for 30 s")
    state.mark_series(CT_UID, SeriesStatus.SKIPPED, "Modality CT, not PT <b>not bold</b>")
    state.mark_series(FAILED_UID, SeriesStatus.FAILED, "ValueError: slice spacing varies")
    prediction, datasets = make_prediction("lymphoma")
    files = write_results(
        prediction,
        datasets,
        data_dir / "outbox" / STUDY_UID / SERIES_UID,
        created=dt.datetime(2026, 11, 27, 9, 0),
    )
    write_thumbnail(dcmread(files[0]), data_dir / "thumbnails" / f"{SERIES_UID}.png")
    for status in (SeriesStatus.QUEUED, SeriesStatus.PROCESSING):
        state.mark_series(SERIES_UID, status)
    state.mark_series(
        SERIES_UID,
        SeriesStatus.DONE,
        "lymphoma (P(lymphoma) 0.870), model 0.0.test",
        detail={
            "label": "lymphoma",
            "probability_lymphoma": 0.87,
            "model_version": "0.0.test",
            "weights_sha256": "ab" * 32,
        },
    )
    node.ledger.enqueue(RESULT_ID, files, ["results-folder", "pacs"])
    node.ledger.run_due([FakeDestination("results-folder"), FakeDestination("pacs", permanent)])


@dataclass
class Served:
    node: Node
    url: str
    log: io.StringIO

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, follow_redirects=False, timeout=30)

    @contextmanager
    def login(self, token: str) -> Iterator[httpx.Client]:
        with self.client() as client:
            reply = client.post("/login", data={"token": token, "next": "/dashboard/"})
            assert reply.status_code == 303, reply.text
            yield client


def _serve(
    config: Config, log: io.StringIO, before_start: Callable[[Node], None] | None = None
) -> Iterator[Served]:
    node = Node(config)
    _fill(node)
    if before_start is not None:
        before_start(node)
    node.start(worker_threads=0)
    try:
        yield Served(node, f"http://127.0.0.1:{config.service.http_port}", log)
    finally:
        node.stop()


@pytest.fixture
def served(tmp_path: Path, json_log: io.StringIO) -> Iterator[Served]:
    yield from _serve(_config(tmp_path), json_log)


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match is not None, page
    return match.group(1)


# -- authentication ------------------------------------------------------------------------------


def test_without_a_login_pages_redirect_and_the_rest_answers_401(served: Served) -> None:
    with served.client() as client:
        page = client.get("/dashboard/deliveries")
        assert page.status_code == 303
        assert page.headers["location"] == "/login?next=/dashboard/deliveries"
        assert client.get("/").status_code == 303
        for path in ("/status", f"/dashboard/thumbnails/{SERIES_UID}.png"):
            reply = client.get(path)
            assert reply.status_code == 401, path
            assert reply.headers["www-authenticate"].startswith("Bearer")
        retry = client.post(
            "/dashboard/deliveries/retry", data={"result_id": RESULT_ID, "destination": "pacs"}
        )
        assert retry.status_code == 401
        assert client.get("/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
        login = client.post("/login", data={"token": "wrong"})
        assert login.status_code == 401
        assert "not valid" in login.text
        assert "set-cookie" not in login.headers
        form = client.get("/login")
        assert form.status_code == 200
        assert RESEARCH in form.text
        # Probes and Prometheus stay open.
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200
    assert served.node.ledger.records(DeliveryState.DEAD)  # nothing was re-armed


def test_bearer_token_for_scripts(served: Served) -> None:
    with served.client() as client:
        reply = client.get("/status", headers={"Authorization": f"Bearer {VIEWER_TOKEN}"})
        lower = client.get("/status", headers={"authorization": f"bearer {VIEWER_TOKEN}"})
    assert reply.status_code == 200
    assert lower.status_code == 200
    by_uid = {s["series_instance_uid"]: s for s in reply.json()["series"]}
    assert by_uid[SERIES_UID]["status"] == "done"
    assert by_uid[CT_UID]["status"] == "skipped"


def test_login_cookie_is_http_only_strict_and_expires(served: Served) -> None:
    with served.client() as client:
        reply = client.post("/login", data={"token": ADMIN_TOKEN, "next": "/dashboard/model"})
        assert reply.status_code == 303
        assert reply.headers["location"] == "/dashboard/model"
        cookie = reply.headers["set-cookie"]
        flags = [f.strip() for f in cookie.split(";")]
        assert flags[0].startswith("sarclym_session=")
        assert len(flags[0].split("=", 1)[1]) >= 40  # 256 random bits
        assert {"HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"} <= set(flags)
        assert "Secure" not in flags  # plain HTTP on 127.0.0.1 by default
        assert client.get("/dashboard/").status_code == 200
        # An off-site "next" is not followed.
        other = client.post("/login", data={"token": ADMIN_TOKEN, "next": "//evil.example/"})
        assert other.headers["location"] == "/dashboard/"


def test_secure_cookie_when_configured(tmp_path: Path, json_log: io.StringIO) -> None:
    for served in _serve(_config(tmp_path, secure_cookie="true"), json_log):
        with served.client() as client:
            reply = client.post("/login", data={"token": VIEWER_TOKEN})
        assert "Secure" in [f.strip() for f in reply.headers["set-cookie"].split(";")]


def test_logout_ends_the_session(served: Served) -> None:
    with served.login(VIEWER_TOKEN) as client:
        page = client.get("/dashboard/")
        assert page.status_code == 200
        cookie = client.cookies["sarclym_session"]
        out = client.post("/logout", data={"csrf": _csrf(page.text)})
        assert out.status_code == 303
        assert "Max-Age=0" in out.headers["set-cookie"]
    with served.client() as stale:
        stale.cookies.set("sarclym_session", cookie)
        assert stale.get("/dashboard/").status_code == 303


def test_sessions_expire() -> None:
    now = [1000.0]
    auth = Authenticator(
        [("alice", "admin", hash_token("t"))], session_s=60.0, clock=lambda: now[0]
    )
    assert auth.check_token("t") == Principal("alice", "admin")
    assert auth.check_token("t ") == Principal("alice", "admin")  # pasted with a newline
    assert auth.check_token("u") is None
    session_id, session = auth.open_session(Principal("alice", "admin"))
    assert auth.session(session_id) == session
    now[0] += 61.0
    assert auth.session(session_id) is None


# -- roles and CSRF ------------------------------------------------------------------------------


def _retry(client: httpx.Client, csrf: str | None) -> httpx.Response:
    form = {"result_id": RESULT_ID, "destination": "pacs"}
    return client.post(
        "/dashboard/deliveries/retry", data=form if csrf is None else {**form, "csrf": csrf}
    )


def _pacs(served: Served) -> tuple[str, int]:
    (record,) = [r for r in served.node.ledger.records() if r.destination == "pacs"]
    return record.state.value, record.attempts


def test_viewer_cannot_retry(served: Served) -> None:
    with served.login(VIEWER_TOKEN) as client:
        page = client.get("/dashboard/deliveries")
        assert page.status_code == 200
        assert "pacs" in page.text
        assert "Retry</button>" not in page.text
        assert "admin only" in page.text
        assert _retry(client, _csrf(page.text)).status_code == 403
    with served.client() as client:
        bearer = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
        form = {"result_id": RESULT_ID, "destination": "pacs"}
        reply = client.post("/dashboard/deliveries/retry", data=form, headers=bearer)
        assert reply.status_code == 403
    assert _pacs(served) == ("dead", 1)


def test_admin_retry_needs_the_csrf_token(served: Served) -> None:
    with served.login(ADMIN_TOKEN) as client:
        page = client.get("/dashboard/deliveries")
        assert 'class="retry" data-destination="pacs">Retry</button>' in page.text
        assert _retry(client, None).status_code == 403
        assert _retry(client, "forged").status_code == 403
        cross = client.post(
            "/dashboard/deliveries/retry",
            data={"result_id": RESULT_ID, "destination": "pacs", "csrf": _csrf(page.text)},
            headers={"Sec-Fetch-Site": "cross-site"},
        )
        assert cross.status_code == 403
        assert _pacs(served) == ("dead", 1)
        done = _retry(client, _csrf(page.text))
        assert done.status_code == 303
        location = done.headers["location"]
        assert location.startswith("/dashboard/deliveries?retried=1&")
        # "pacs" is not a destination of this node: the page says so, without waiting for it.
        flash = _flash(client.get(location).text)
        assert "Re-armed pacs" in flash
        assert "not a destination of this node" in flash
    # "pacs" is not a destination of this node, so it stays re-armed, untried.
    assert _pacs(served) == ("pending", 0)
    retry = [
        e for e in audit_events(served.node.state, series_uid=SERIES_UID) if e.event == "retry"
    ]
    assert [(e.actor, e.detail["destination"]) for e in retry] == [("dashboard:alice", "pacs")]


def test_admin_script_retries_with_a_bearer_token(served: Served) -> None:
    with served.client() as client:
        bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        form = {"result_id": RESULT_ID, "destination": "pacs"}
        reply = client.post("/dashboard/deliveries/retry", data=form, headers=bearer)
        # A "next" with a line break cannot add a header to the redirect.
        evil = {**form, "next": "/dashboard/deliveries\r\nX-Evil: 1"}
        split = client.post("/dashboard/deliveries/retry", data=evil, headers=bearer)
    assert reply.status_code == 303
    assert _pacs(served) == ("pending", 0)
    assert split.status_code == 303
    assert split.headers["location"].startswith("/dashboard/?retried=1&")
    assert "x-evil" not in split.headers


# -- pages ---------------------------------------------------------------------------------------


def test_pages_show_stages_results_deliveries_model_and_audit(served: Served) -> None:
    with served.login(ADMIN_TOKEN) as client:
        pages = {
            path: client.get(path)
            for path in (
                "/dashboard/",
                "/dashboard/?status=skipped",
                "/dashboard/results",
                "/dashboard/deliveries",
                "/dashboard/model",
                "/dashboard/audit",
                f"/dashboard/series/{SERIES_UID}",
            )
        }
        thumb = client.get(f"/dashboard/thumbnails/{SERIES_UID}.png")
        missing = client.get(f"/dashboard/series/{STUDY_UID}.99")
    for path, page in pages.items():
        assert page.status_code == 200, path
        assert RESEARCH in page.text, path
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        assert "alice (admin)" in page.text
        for value in PHI.values():  # the pages show UIDs, never patient data
            if len(value) > 8:
                assert value not in page.text, (path, value)
    overview = pages["/dashboard/"].text
    assert STUDY_UID in overview
    assert 'P(lymphoma) <b class="p-lymphoma">0.870</b>' in overview
    assert f'src="/dashboard/thumbnails/{SERIES_UID}.png"' in overview
    for stage in ("complete +", "queued +", "processing +", "done +"):
        assert stage in overview
    assert "Modality CT, not PT &lt;b&gt;not bold&lt;/b&gt;" in overview  # escaped
    assert "<h2>Failed series</h2>" in overview
    assert "ValueError: slice spacing varies" in overview
    assert 'results-folder <span class="badge b-delivered">delivered</span> +' in overview
    skipped = pages["/dashboard/?status=skipped"].text
    assert CT_UID in skipped
    assert SERIES_UID not in skipped
    assert "model 0.0.test" in pages["/dashboard/results"].text
    deliveries = pages["/dashboard/deliveries"].text
    assert "status 0xA900" in deliveries
    assert "b-dead" in deliveries
    model = pages["/dashboard/model"].text
    card = json.loads(
        (served.node.config.storage.data_dir / "models" / SHIPPED / "model_card.json").read_text()
    )
    assert f'<b class="model-version">{SHIPPED}</b>' in model
    assert card["weights_sha256"] in model
    assert "<h2>Model card</h2>" in model
    assert "Cross-validated metrics" in model
    audit = pages["/dashboard/audit"].text
    assert "STORESCU" in audit
    assert "b-dead" in audit
    series = pages[f"/dashboard/series/{SERIES_UID}"].text
    events = re.findall(r'<tr data-event="(\w+)">', series)
    assert events[:5] == ["received", "complete", "queued", "processing", "done"]
    assert {"delivered", "dead"} <= set(events)
    assert thumb.status_code == 200
    assert thumb.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(thumb.content)) as image:
        assert max(image.size) == THUMBNAIL_SIZE
    assert missing.status_code == 404


def test_dashboard_off_keeps_status_behind_a_token(tmp_path: Path, json_log: io.StringIO) -> None:
    for served in _serve(_config(tmp_path, enabled="false"), json_log):
        with served.client() as client:
            assert client.get("/dashboard/").status_code == 404
            assert client.get("/login").status_code == 404
            assert client.get("/status").status_code == 401
            bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            assert client.get("/status", headers=bearer).status_code == 200


def test_logs_hold_no_token_session_uid_or_phi(served: Served) -> None:
    with served.login(ADMIN_TOKEN) as client:
        session = client.cookies["sarclym_session"]
        page = client.get("/dashboard/deliveries")
        _retry(client, _csrf(page.text))
        _retry(client, None)
    with served.client() as client:
        client.post("/login", data={"token": "wrong-" + ADMIN_TOKEN})
        client.get("/status", headers={"Authorization": f"Bearer {VIEWER_TOKEN}x"})
        with served.login(VIEWER_TOKEN) as viewer:
            _retry(viewer, _csrf(viewer.get("/dashboard/").text))
    # The node's lines (the test's own HTTP client logs what it sends, at DEBUG).
    lines = [json.loads(line) for line in served.log.getvalue().splitlines()]
    lines = [line for line in lines if not line.get("logger", "").startswith(("httpx", "httpcore"))]
    text = "\n".join(map(json.dumps, lines))
    for secret in (ADMIN_TOKEN, VIEWER_TOKEN, session):
        assert secret not in text
    assert_no_phi(text)
    ours = [line for line in lines if "dashboard" in line.get("logger", "")]
    events = {line["event"] for line in ours}
    assert {"dashboard login", "dashboard login refused", "dashboard retry"} <= events
    assert "dashboard retry refused: not an admin" in events
    assert not any(STUDY_UID in json.dumps(line) for line in ours)


# -- the admin token file, the CLI, configuration -----------------------------------------------


def test_admin_token_file_is_0600_and_reused(
    tmp_path: Path, json_log: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(environ={"SARCLYM__STORAGE__DATA_DIR": str(tmp_path / "var")})
    path = DataLayout(tmp_path / "var").admin_token
    old = os.umask(0)  # even with a permissive umask
    try:
        first = Authenticator.from_config(config)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert len(token) >= 40
    assert first.check_token(token) == Principal("admin", "admin")
    second = Authenticator.from_config(config)
    assert path.read_text().strip() == token
    assert second.check_token(token) == Principal("admin", "admin")
    assert token not in json_log.getvalue()
    assert str(path) in json_log.getvalue()
    assert not list(path.parent.glob(".*.tmp"))
    # Loosened by hand: tightened again, same token.
    path.chmod(0o644)
    assert ensure_admin_token(path) == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Configured users: no token file is made.
    other = tmp_path / "other"
    Authenticator.from_config(_config(other))
    assert not DataLayout(other / "var").admin_token.exists()


def test_dashboard_token_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard-token", "--name", "ward-display", "--role", "viewer"]) == EXIT_OK
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    token = lines[1]
    entry = next(line for line in lines if line.startswith("- {name: ward-display"))
    file = tmp_path / "node.yaml"
    file.write_text("dashboard:\n  users:\n    " + entry + "\n")
    config = load_config(file, environ={})
    assert config.dashboard.users[0].token_sha256 == hash_token(token)
    auth = Authenticator.from_config(config)
    assert auth.check_token(token) == Principal("ward-display", "viewer")
    assert main(["dashboard-token", "--name", "bad name", "--role", "admin"]) == EXIT_BAD_INPUT
    with pytest.raises(SystemExit):
        main(["dashboard-token", "--name", "x", "--role", "root"])
    with pytest.raises(SystemExit) as info:
        main(["dashboard-token", "--help"])
    assert info.value.code == 0


@pytest.mark.parametrize(
    ("users", "expected"),
    [
        ("[{name: a, role: admin, token_sha256: secret}]", "dashboard.users.0.token_sha256"),
        ("[{name: a, role: root, token_sha256: " + "a" * 64 + "}]", "dashboard.users.0.role"),
        (
            "[{name: a, role: admin, token_sha256: " + "a" * 64 + "}, "
            "{name: a, role: viewer, token_sha256: " + "b" * 64 + "}]",
            "unique",
        ),
    ],
)
def test_bad_users_fail_at_load(users: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(environ={"SARCLYM__DASHBOARD__USERS": users})


def test_markdown_is_escaped() -> None:
    text = (
        "# Card <script>x</script>\n\n| a | b |\n| --- | --- |\n| `<i>` | **y** |\n\n- <b>z</b>\n"
    )
    out = markdown_to_html(text)
    assert "<script>" not in out
    assert "<b>" not in out
    assert "<i>" not in out
    assert "<h2>Card &lt;script&gt;x&lt;/script&gt;</h2>" in out
    assert "<td><code>&lt;i&gt;</code></td><td><strong>y</strong></td>" in out
    assert "<li>&lt;b&gt;z&lt;/b&gt;</li>" in out


# -- what the physician sees: the full-resolution result, patient context --------------------


def _flash(page: str) -> str:
    match = re.search(r'<p class="flash">(.*?)</p>', page, re.S)
    assert match is not None, page
    return match.group(1)


def _sc_file(node: Node) -> Path:
    outbox = DataLayout(node.config.storage.data_dir).outbox / STUDY_UID / SERIES_UID
    (sc,) = [p for p in outbox.iterdir() if dcmread(p).Modality == "OT"]
    return sc


def _img_widths(page: str, src: str) -> list[int]:
    return [
        int(w)
        for w in re.findall(rf'<img class="thumb" src="{re.escape(src)}" width="(\d+)"', page)
    ]


def test_result_image_at_full_resolution_behind_the_login(served: Served) -> None:
    """The thumbnail opens the SC's pixels at full resolution; it is never shown upscaled."""
    full = f"/dashboard/results/{SERIES_UID}/sc.png"
    thumb = f"/dashboard/thumbnails/{SERIES_UID}.png"
    sc = dcmread(_sc_file(served.node))
    with served.client() as client:
        refused = client.get(full)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
    with served.login(VIEWER_TOKEN) as client:
        reply = client.get(full)
        pages = {p: client.get(p).text for p in ("/dashboard/", "/dashboard/results")}
        series = client.get(f"/dashboard/series/{SERIES_UID}").text
        assert client.get(f"/dashboard/results/{CT_UID}/sc.png").status_code == 404
        assert client.get(f"/dashboard/results/{STUDY_UID}.99/sc.png").status_code == 404
        # Older results have no stored full-size PNG: rendered from the SC still in the outbox.
        stored = served.node.config.storage.data_dir / "thumbnails" / f"{SERIES_UID}.sc.png"
        stored.unlink()
        rendered = client.get(full)
        # Once the outbox is pruned too, there is nothing left to show.
        for path in _sc_file(served.node).parent.iterdir():
            path.unlink()
        gone = client.get(full)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "image/png"
    assert reply.headers["cache-control"] == "no-store"
    with Image.open(io.BytesIO(reply.content)) as image:
        assert image.size == (sc.Columns, sc.Rows)
        assert np.array_equal(np.asarray(image.convert("RGB")), sc.pixel_array)
    assert rendered.status_code == 200
    assert rendered.content == reply.content
    assert gone.status_code == 404
    with Image.open(io.BytesIO(client_thumbnail(served))) as small:
        natural = small.size[0]
    for path, page in pages.items():
        assert f'<a class="result-image" href="{full}">' in page, path
        widths = _img_widths(page, thumb)
        assert widths, path
        assert all(w <= natural // 2 for w in widths), (path, widths, natural)  # sharp at 2x
    # The series page shows the full-resolution image itself: no width, so never enlarged
    # (the style sheet shrinks it to the page).
    assert f'<a class="result-image" href="{full}"><img class="full" src="{full}" alt=' in series
    assert ".full{display:block;max-width:100%;height:auto;" in series


def client_thumbnail(served: Served) -> bytes:
    with served.login(VIEWER_TOKEN) as client:
        return client.get(f"/dashboard/thumbnails/{SERIES_UID}.png").content


def _context_shown(page: str) -> bool:
    return "Mustermann, Erika Maria" in page


def test_patient_context_only_for_the_configured_roles(
    tmp_path: Path, json_log: io.StringIO
) -> None:
    config = _config(tmp_path, patient_context_roles="[admin]")
    for served in _serve(config, json_log):
        paths = ("/dashboard/", "/dashboard/results", f"/dashboard/series/{SERIES_UID}")
        with served.login(ADMIN_TOKEN) as client:
            admin = {p: client.get(p).text for p in paths}
            status = client.get("/status").text
        with served.login(VIEWER_TOKEN) as client:
            viewer = {p: client.get(p).text for p in paths}
        # Nothing of the series left on the node: the page says so instead of guessing.
        for path in _sc_file(served.node).parent.iterdir():
            path.unlink()
        with served.login(ADMIN_TOKEN) as client:
            pruned = client.get(f"/dashboard/series/{SERIES_UID}").text
    for path, page in admin.items():
        assert _context_shown(page), path
        assert "Patient context is shown to your role" in page
    series = admin[f"/dashboard/series/{SERIES_UID}"]
    for shown in ("PHI-0815-4711", "1961-05-12", "ACC-20240301-42", "2024-03-01", "PET-CT FDG"):
        assert shown in series, shown
    assert '<dt>patient</dt><dd><span class="context">Mustermann, Erika Maria</span>' in series
    for path, page in viewer.items():
        for value in PHI.values():
            if len(value) > 8:
                assert value not in page, (path, value)
        assert not _context_shown(page), path
        assert "UIDs only" in page
    assert not _context_shown(status)
    assert "PHI-0815-4711" not in status
    assert not _context_shown(pruned)
    assert "no file of this series is left on the node" in pruned
    assert_no_phi(served.log.getvalue())


def test_patient_context_is_off_by_default(served: Served) -> None:
    assert served.node.config.dashboard.patient_context_roles == ()
    with served.login(ADMIN_TOKEN) as client:
        page = client.get(f"/dashboard/series/{SERIES_UID}").text
    assert not _context_shown(page)
    assert "PHI-0815-4711" not in page
    assert "UIDs only" in page


# -- Retry: the page that follows shows what the attempt did ------------------------------------

OTHER_RESULT = f"{SERIES_UID}/0.0.other"


def _dead_rows(node: Node) -> None:
    """A second result whose copies for two configured destinations are in the dead letter."""
    files = sorted(_sc_file(node).parent.iterdir())
    node.ledger.enqueue(OTHER_RESULT, files, ["results-folder", "broken-folder"])
    dead = [
        FakeDestination("results-folder", permanent),
        FakeDestination("broken-folder", permanent),
    ]
    node.ledger.run_due(dead)


def _row(node: Node, destination: str) -> tuple[str, int, str | None]:
    (record,) = [r for r in node.ledger.summary(OTHER_RESULT) if r.destination == destination]
    return record.state.value, record.attempts, record.last_error


def test_retry_page_shows_the_outcome_of_the_attempt(tmp_path: Path, json_log: io.StringIO) -> None:
    """After Retry the page is read once the node has tried the delivery again (not the
    re-armed "pending, 0 attempts" of a moment before, with the old error)."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the destination wants a folder")
    targets = [
        {"kind": "folder", "name": "results-folder"},
        {"kind": "folder", "name": "broken-folder", "path": str(blocker)},
    ]
    targets_yaml = yaml.safe_dump(targets, default_flow_style=True)
    extra = {
        "SARCLYM__DESTINATIONS__TARGETS": targets_yaml,
        # The failed attempt's retry is not due during the test (no jitter: no short delay).
        "SARCLYM__DESTINATIONS__RETRY__JITTER": "none",
        "SARCLYM__DESTINATIONS__RETRY__BASE_DELAY_S": "600",
    }
    config = _config(tmp_path, extra, retry_wait_seconds="60")
    for served in _serve(config, json_log, before_start=_dead_rows):
        node = served.node
        assert _row(node, "results-folder")[:2] == ("dead", 1)
        with served.login(ADMIN_TOKEN) as client:
            page = client.get("/dashboard/deliveries").text
            csrf = _csrf(page)
            form = {"csrf": csrf, "result_id": OTHER_RESULT, "next": "/dashboard/deliveries"}
            ok = client.post(
                "/dashboard/deliveries/retry", data={**form, "destination": "results-folder"}
            )
            assert ok.status_code == 303
            after_ok = client.get(ok.headers["location"]).text
            bad = client.post(
                "/dashboard/deliveries/retry", data={**form, "destination": "broken-folder"}
            )
            after_bad = client.get(bad.headers["location"]).text
        assert _row(node, "results-folder")[:2] == ("delivered", 1)
        state, attempts, error = _row(node, "broken-folder")
    assert "Retried results-folder: delivered." in _flash(after_ok)
    rows = re.findall(r'<tr data-result="([^"]+)" data-destination="([^"]+)">', after_ok)
    assert (OTHER_RESULT, "results-folder") not in rows  # delivered: no longer undelivered
    assert (state, attempts) == ("pending", 1)
    assert error is not None
    assert "folder:" in error
    assert "0xA900" not in error
    flash = _flash(after_bad)
    assert "Retried broken-folder: attempt 1 failed" in flash
    assert "folder:" in flash
    row = re.search(
        rf'<tr data-result="{re.escape(OTHER_RESULT)}" data-destination="broken-folder">(.*?)</tr>',
        after_bad,
        re.S,
    )
    assert row is not None
    assert '<td class="num">1</td>' in row.group(1)
    assert "0xA900" not in row.group(1)
