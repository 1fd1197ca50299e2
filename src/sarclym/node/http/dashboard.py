"""The web dashboard, served on the node's HTTP endpoint behind a login.

Pages (server-rendered HTML, see :mod:`sarclym.node.http.views`), all read from state.db:

=============================== ==================================================================
``/dashboard/``                 recent studies and series: state of each stage and its time after
                                the last instance (complete, queued, processing, done, delivered
                                per destination), result with thumbnail, skipped and failed series
                                with the reason; ``?status=failed`` etc. filters
``/dashboard/series/<uid>``     one series: facts, result (full resolution), deliveries, its audit
                                trail
``/dashboard/results``          results: Grad-CAM thumbnail, label, P(lymphoma), model version
``/dashboard/results/<uid>/     the result's Secondary Capture at full resolution (PNG): where a
sc.png``                        thumbnail leads
``/dashboard/deliveries``       undelivered results (pending, dead) with a Retry button (admin)
``/dashboard/model``            the active model: version, weights SHA-256, model card
``/dashboard/audit``            the latest audit events of every series
``/dashboard/monitoring``       concordance with final diagnoses, drift, the stop rule
                                (:mod:`sarclym.node.http.monitoring_page`); a series page has
                                the "final diagnosis" form (``POST /dashboard/feedback``)
``/status``                     the recent series as JSON (what ``sarclym-node status`` shows)
=============================== ==================================================================

Who may see them: :mod:`sarclym.node.http.auth` (tokens, sessions). A page without a valid
session redirects to ``/login``; ``/status``, images and POSTs answer 401 instead. Scripts
send ``Authorization: Bearer <token>``. Changes (``POST /dashboard/deliveries/retry``) need the
admin role (else 403) and, with a session cookie, the session's CSRF token (else 403).

Patient and study context (name, ID, birth date, study date...) is shown only to users whose
role is in ``dashboard.patient_context_roles`` (none by default: UIDs only), read from the
series' files still on the node (:mod:`sarclym.node.http.result_files`); never logged, never in
``/status``.

Images: the worker keeps a thumbnail and a full-resolution PNG of each Secondary Capture in
``<data_dir>/thumbnails/`` (:mod:`sarclym.node.worker.thumbnail`), because the result files leave
the outbox once delivered.

Retry is a POST that redirects to a GET (303); before redirecting it waits, at most
``dashboard.retry_wait_seconds``, for the node's attempt, so that the page that follows shows
what the attempt did rather than the re-armed row of a moment before
(:mod:`sarclym.node.http.retry`).
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Callable, Mapping
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import structlog

from sarclym.node import __version__
from sarclym.node.config import Config
from sarclym.node.delivery.ledger import DeliveryLedger
from sarclym.node.http import views as h
from sarclym.node.http.auth import Authenticator, Principal, Session, admin_token_path
from sarclym.node.http.exchange import (
    SECURITY_HEADERS,
    Request,
    Response,
    html,
    json_response,
    redirect,
    safe_next,
)
from sarclym.node.http.result_files import (
    PatientContext,
    has_result_png,
    patient_context,
    result_png,
)
from sarclym.node.http.retry import await_attempt, retry_location, retry_notice, sends_to
from sarclym.node.store.audit import STATUS_EVENTS, AuditEvent, audit_events
from sarclym.node.store.layout import DataLayout
from sarclym.node.store.records import (
    DeliveryRecord,
    DeliveryState,
    SeriesRecord,
    SeriesResult,
    SeriesStatus,
)
from sarclym.node.store.state import StateDB

if TYPE_CHECKING:
    from sarclym.node.worker.running_model import LoadedVersion

__all__ = [
    "Dashboard",
    "Request",
    "Response",
    "dashboard_url",
    "login_hint",
]

log = structlog.get_logger(__name__)

COOKIE = "sarclym_session"
_UID = r"([0-9]+(?:\.[0-9]+)+)"
_SERIES_PAGE = re.compile(rf"^/dashboard/series/{_UID}$")
_THUMBNAIL = re.compile(rf"^/dashboard/thumbnails/{_UID}\.png$")
_RESULT_IMAGE = re.compile(rf"^/dashboard/results/{_UID}/sc\.png$")
#: Paths that answer 401 (not a redirect to the login form) without a credential.
_API = re.compile(r"^/status$|^/dashboard/thumbnails/|^/dashboard/results/.+\.png$")


def dashboard_url(config: Config) -> str:
    """Where a browser on this host finds the dashboard."""
    host = config.service.http_host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{config.service.http_port}/dashboard/"


def login_hint(config: Config) -> str:
    """What to log in with: the bootstrap token's file, or the configured users' tokens."""
    if config.dashboard.users:
        return "log in with a token of dashboard.users"
    return f"log in with the token in {admin_token_path(config)}"


class Dashboard:
    """The dashboard's routes, on the HTTP endpoint of a :class:`~sarclym.node.service.Node`.

    Parameters
    ----------
    config
        The node configuration (``dashboard`` section, data folder, model).
    state
        The state database.
    ledger
        The delivery ledger (read; ``retry`` for admins).
    status
        Returns the ``/status`` JSON.
    notify
        Called after deliveries were re-armed (wakes the deliverer).
    authenticator
        Users and sessions; from the configuration by default (which creates the bootstrap
        admin token file when no user is configured).
    """

    def __init__(
        self,
        config: Config,
        state: StateDB,
        ledger: DeliveryLedger,
        *,
        status: Callable[[], dict[str, Any]],
        notify: Callable[[], None] = lambda: None,
        authenticator: Authenticator | None = None,
        loaded_model: Callable[[], LoadedVersion | None] | None = None,
    ) -> None:
        self.config = config
        #: What this process's worker threads run, for the Model page (None: it runs no model).
        self.loaded_model = loaded_model
        self.state = state
        self.ledger = ledger
        self.status = status
        self.notify = notify
        self.auth = authenticator or Authenticator.from_config(config)
        self.layout = DataLayout(config.storage.data_dir)
        self.thumbnails = self.layout.thumbnails

    # -- HTTP ------------------------------------------------------------------------------------

    def handles(self, path: str) -> bool:
        """Whether a path (without query) is the dashboard's."""
        if path == "/status":
            return True
        if not self.config.dashboard.enabled:
            return False
        return path in ("/", "/login", "/logout", "/dashboard") or path.startswith("/dashboard/")

    def handle(self, handler: BaseHTTPRequestHandler, body: bytes = b"") -> bool:
        """Answer the request if its path is the dashboard's; return whether it was.

        Called from the node's HTTP handler for every GET and POST it does not serve itself.
        ``body`` is a POST's form, read by the server within its bounds (strict framing, read
        timeout, 64 KiB: :mod:`sarclym.node.http._body`), which answers a bad one itself.
        """
        url = urlsplit(handler.path)
        if not self.handles(url.path):
            return False
        form: dict[str, str] = {}
        if handler.command == "POST":
            text = body.decode("utf-8", "replace")
            form = {k: v[-1] for k, v in parse_qs(text).items()}
        request = Request(
            method=handler.command,
            path=url.path,
            query={k: v[-1] for k, v in parse_qs(url.query).items()},
            headers={k.lower(): v for k, v in handler.headers.items()},
            form=form,
            client=str(handler.client_address[0]),
        )
        self._write(handler, self.respond(request))
        return True

    @staticmethod
    def _write(handler: BaseHTTPRequestHandler, response: Response) -> None:
        handler.send_response(response.status)
        handler.send_header("Content-Type", response.content_type)
        handler.send_header("Content-Length", str(len(response.body)))
        for name, value in (*SECURITY_HEADERS, *response.headers):
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(response.body)

    def respond(self, request: Request) -> Response:
        """The response to a request on one of the dashboard's paths."""
        if request.method == "POST" and request.header("Sec-Fetch-Site") == "cross-site":
            return json_response(403, {"error": "cross-site request refused"})
        if request.path == "/login" and self.config.dashboard.enabled:
            return self._login(request)
        principal, session, refused = self._authenticate(request)
        if principal is None:
            api = _API.match(request.path) is not None
            if refused or api or request.method != "GET":
                response = json_response(401, {"error": "login or Authorization: Bearer <token>"})
                response.headers.append(("WWW-Authenticate", 'Bearer realm="sarclym-node"'))
                return response
            return redirect(f"/login?next={request.path}")
        if request.method == "POST":
            if session is not None and not self._csrf_ok(request, session):
                log.warning("dashboard request without a valid CSRF token", user=principal.name)
                return self._error(403, "Missing or wrong CSRF token.", principal, session)
            if request.path == "/logout":
                return self._logout(request)
            if request.path == "/dashboard/deliveries/retry":
                return self._retry(request, principal, session)
            if request.path == "/dashboard/feedback":
                return self._feedback(request, principal, session)
            return self._error(404, "No such page.", principal, session)
        return self._get(request, principal, session)

    def _authenticate(self, request: Request) -> tuple[Principal | None, Session | None, bool]:
        """(user, session or None for a bearer token, whether a credential was refused)."""
        authorization = request.header("Authorization")
        if authorization:
            scheme, _, token = authorization.partition(" ")
            principal = self.auth.check_token(token) if scheme.lower() == "bearer" else None
            if principal is None:
                log.warning("dashboard bearer token refused", client=request.client)
                return None, None, True
            return principal, None, False
        session_id = self._cookie(request)
        session = self.auth.session(session_id) if session_id else None
        if session is None:
            return None, None, False
        return session.principal, session, False

    @staticmethod
    def _cookie(request: Request) -> str | None:
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(request.header("Cookie"))
        except CookieError:
            return None
        morsel = cookies.get(COOKIE)
        return morsel.value if morsel is not None else None

    @staticmethod
    def _csrf_ok(request: Request, session: Session) -> bool:
        return hmac.compare_digest(request.form.get("csrf", "").encode(), session.csrf.encode())

    def _cookie_header(self, value: str, max_age: int) -> tuple[str, str]:
        secure = "; Secure" if self.config.dashboard.secure_cookie else ""
        return (
            "Set-Cookie",
            f"{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}",
        )

    # -- login -------------------------------------------------------------------------------

    def _login(self, request: Request) -> Response:
        target = safe_next(request.form.get("next") or request.query.get("next"))
        if request.method == "GET":
            principal, _, _ = self._authenticate(request)
            if principal is not None:
                return redirect(target)
            return html(200, h.login_page(target, version=__version__))
        principal = self.auth.check_token(request.form.get("token", ""))
        if principal is None:
            log.warning("dashboard login refused", client=request.client)
            error = "That token is not valid."
            return html(401, h.login_page(target, error, version=__version__))
        session_id, _ = self.auth.open_session(principal)
        log.info("dashboard login", user=principal.name, role=principal.role, client=request.client)
        response = redirect(target)
        response.headers.append(self._cookie_header(session_id, int(self.auth.session_s)))
        return response

    def _logout(self, request: Request) -> Response:
        session_id = self._cookie(request)
        if session_id:
            self.auth.close_session(session_id)
        response = redirect("/login")
        response.headers.append(self._cookie_header("", 0))
        return response

    # -- actions -----------------------------------------------------------------------------

    def _retry(self, request: Request, principal: Principal, session: Session | None) -> Response:
        if not principal.is_admin:
            log.warning("dashboard retry refused: not an admin", user=principal.name)
            return self._error(403, "Only an admin may retry deliveries.", principal, session)
        result_id = request.form.get("result_id")
        destination = request.form.get("destination")
        if not result_id or not destination:
            return self._error(400, "result_id and destination are required.", principal, session)
        count = self.ledger.retry(
            result_id=result_id, destination=destination, actor=principal.actor
        )
        self.notify()
        settled = True
        if count and sends_to(self.config, destination):
            wait = self.config.dashboard.retry_wait_seconds
            settled = await_attempt(self.ledger, result_id, destination, timeout_s=wait)
        log.info(
            "dashboard retry",
            user=principal.name,
            destination=destination,
            count=count,
            outcome_recorded=settled,
        )
        back = safe_next(request.form.get("next") or "/dashboard/deliveries").split("?", 1)[0]
        return redirect(
            retry_location(
                back, count=count, result_id=result_id, destination=destination, settled=settled
            )
        )

    def _feedback(
        self, request: Request, principal: Principal, session: Session | None
    ) -> Response:
        from sarclym.node.http.monitoring_page import post_feedback

        status, text = post_feedback(self.state, self.config, request.form, actor=principal.actor)
        if status != 303:
            return self._error(status, text, principal, session)
        log.info("dashboard final diagnosis", user=principal.name)
        return redirect(text)

    # -- pages -------------------------------------------------------------------------------

    def _get(self, request: Request, principal: Principal, session: Session | None) -> Response:
        path = request.path
        if path == "/status":
            return json_response(200, self.status())
        if path in ("/", "/dashboard"):
            return redirect("/dashboard/")
        if match := _THUMBNAIL.match(path):
            file = self.thumbnails / f"{match.group(1)}.png"
            if not file.is_file():
                return json_response(404, {"error": "no thumbnail"})
            return Response(200, file.read_bytes(), "image/png")
        if match := _RESULT_IMAGE.match(path):
            record = self.state.series(match.group(1))
            png = result_png(self.layout, record) if record is not None else None
            if png is None:
                return json_response(404, {"error": "no result image on this node"})
            return Response(200, png, "image/png")
        pages: dict[str, Callable[[Request, Principal, Session | None], tuple[str, str]]] = {
            "/dashboard/": self._overview,
            "/dashboard/results": self._results,
            "/dashboard/deliveries": self._deliveries,
            "/dashboard/model": self._model,
            "/dashboard/audit": self._audit,
            "/dashboard/monitoring": self._monitoring,
        }
        if path in pages:
            title, body = pages[path](request, principal, session)
            return self._page(200, title, body, principal, session, active=path)
        if match := _SERIES_PAGE.match(path):
            found = self._series_page(match.group(1), request, principal, session)
            if found is not None:
                return self._page(200, "Series", found, principal, session)
        return self._error(404, "No such page.", principal, session)

    def _page(
        self,
        status: int,
        title: str,
        body: str,
        principal: Principal,
        session: Session | None,
        *,
        active: str = "",
    ) -> Response:
        text = h.page(
            title,
            body,
            user=principal.name,
            role=principal.role,
            csrf=session.csrf if session is not None else None,
            active=active,
            version=__version__,
            patient_context=self._shows_context(principal),
        )
        return html(status, text)

    def _shows_context(self, principal: Principal) -> bool:
        """Whether the user's role may see patient context (``patient_context_roles``)."""
        return principal.role in self.config.dashboard.patient_context_roles

    def _error(
        self, status: int, message: str, principal: Principal, session: Session | None
    ) -> Response:
        body = f'<p class="error">{h.esc(message)}</p>'
        return self._page(status, f"{status}", body, principal, session)

    # -- data ----------------------------------------------------------------------------------

    def _deliveries_by_series(self) -> dict[str, list[DeliveryRecord]]:
        out: dict[str, list[DeliveryRecord]] = {}
        for record in self.ledger.records():
            out.setdefault(record.result.series_uid, []).append(record)
        return out

    def _view(
        self,
        record: SeriesRecord,
        deliveries: Mapping[str, list[DeliveryRecord]],
        principal: Principal,
        contexts: dict[str, PatientContext] | None = None,
    ) -> h.SeriesView:
        """What the pages show of one series; ``contexts`` caches the patient context by study
        (one file read per study on a list page)."""
        events = list(reversed(audit_events(self.state, series_uid=record.series_uid, limit=300)))
        lifecycle = {s.value for s in STATUS_EVENTS}
        stages: dict[str, float] = {"received": record.first_received}
        for event in events:
            if event.event in lifecycle:
                stages[event.event] = event.at  # the latest run counts
        complete = SeriesStatus.COMPLETE.value
        if complete not in stages and record.completed_at is not None:
            stages[complete] = record.completed_at
        final = record.status.value
        if record.status.finished and final not in stages:
            stages[final] = record.status_changed
        result = self._result(record, events)
        allowed = self._shows_context(principal)
        context = None
        if allowed:
            cache = {} if contexts is None else contexts
            context = cache.get(record.study_uid) or patient_context(
                self.state, self.layout, record
            )
            if context is not None:
                cache[record.study_uid] = context
        return h.SeriesView(
            record=record,
            events=events,
            deliveries=deliveries.get(record.series_uid, []),
            result=result,
            thumbnail=(self.thumbnails / f"{record.series_uid}.png").is_file(),
            full_image=result is not None and has_result_png(self.layout, record),
            stages=stages,
            context_allowed=allowed,
            context=context,
        )

    @staticmethod
    def _result(record: SeriesRecord, events: list[AuditEvent]) -> h.ResultView | None:
        """The result of the latest "done" event that names one (a state.db from before the
        audit log got those events from its status reasons when it was migrated)."""
        if record.status is not SeriesStatus.DONE:
            return None
        for event in reversed(events):
            if event.event == SeriesStatus.DONE.value:
                result = SeriesResult.from_detail(event.detail)
                if result is not None:
                    return h.ResultView(
                        label=result.label,
                        probability_lymphoma=result.probability_lymphoma,
                        model_version=result.model_version,
                        weights_sha256=result.weights_sha256,
                        outside_training_data=result.outside_training_data,
                        ood_score=result.ood_score,
                        ood_threshold=result.ood_threshold,
                    )
        return None

    def _recent(
        self, status: SeriesStatus | None, limit: int, principal: Principal
    ) -> list[h.SeriesView]:
        records = self.state.recent_series(status, limit=limit)
        deliveries = self._deliveries_by_series()
        contexts: dict[str, PatientContext] = {}
        return [self._view(record, deliveries, principal, contexts) for record in records]

    # -- page bodies ---------------------------------------------------------------------------

    def _overview(
        self, request: Request, principal: Principal, session: Session | None
    ) -> tuple[str, str]:
        from sarclym.node.http.pages import overview

        wanted = request.query.get("status")
        status = SeriesStatus(wanted) if wanted in {s.value for s in SeriesStatus} else None
        counts = self.state.status_counts()
        views = self._recent(status, 200, principal)
        failed = [] if status else self._recent(SeriesStatus.FAILED, 20, principal)
        title = "Studies and series" + (f": {status.value}" if status else "")
        return title, overview(views, failed, counts, status.value if status else None)

    def _results(
        self, request: Request, principal: Principal, session: Session | None
    ) -> tuple[str, str]:
        from sarclym.node.http.pages import results

        return "Results", results(self._recent(SeriesStatus.DONE, 60, principal))

    def _deliveries(
        self, request: Request, principal: Principal, session: Session | None
    ) -> tuple[str, str]:
        from sarclym.node.http.pages import deliveries

        records = [
            *self.ledger.records(DeliveryState.DEAD),
            *self.ledger.records(DeliveryState.PENDING),
        ]
        records.sort(key=lambda r: r.updated_at, reverse=True)
        delivered = len(self.ledger.records(DeliveryState.DELIVERED))
        csrf = session.csrf if session is not None and session.principal.is_admin else None
        notice = retry_notice(self.config, self.ledger, request.query, now=time.time())
        return "Deliveries", deliveries(
            records, delivered, csrf=csrf, notice=notice, now=time.time()
        )

    def _model(
        self, request: Request, principal: Principal, session: Session | None
    ) -> tuple[str, str]:
        from sarclym.node.http.pages import model

        loaded = self.loaded_model() if self.loaded_model is not None else None
        events = audit_events(self.state, limit=2000)  # each process's latest "done" among them
        return "Model", model(self.config, loaded=loaded, events=events, state=self.state)

    def _audit(
        self, request: Request, principal: Principal, session: Session | None
    ) -> tuple[str, str]:
        from sarclym.node.http.pages import audit

        return "Audit log", audit(audit_events(self.state, limit=300))

    def _monitoring(
        self, request: Request, principal: Principal, session: Session | None
    ) -> tuple[str, str]:
        from sarclym.node.http.monitoring_page import monitoring_body

        return "Monitoring", monitoring_body(self.state, self.config)

    def _series_page(
        self, uid: str, request: Request, principal: Principal, session: Session | None
    ) -> str | None:
        from sarclym.node.http.pages import series

        record = self.state.series(uid)
        if record is None:
            return None
        view = self._view(record, self._deliveries_by_series(), principal)
        csrf = session.csrf if session is not None and principal.is_admin else None
        notice = retry_notice(self.config, self.ledger, request.query, now=time.time())
        from sarclym.node.http.monitoring_page import diagnosis_section

        body = series(view, csrf=csrf, notice=notice, now=time.time())
        form_csrf = session.csrf if session is not None else None
        return body + diagnosis_section(self.state, record, form_csrf)
