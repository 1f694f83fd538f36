"""The Starlette application: settings, templates, the token gate, error pages, and
the routing table (read-only UIs get no mutating route)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gepa_trace.errors import (
    ConfigError,
    FeedbackError,
    GateRefused,
    GepaTraceError,
    NotFoundError,
    ReviewRequired,
)
from gepa_trace.store import Store, open_store
from gepa_trace.ui.security import (
    CSRF_COOKIE,
    TOKEN_COOKIE,
    csrf_refusal,
    csrf_token,
    same_token,
    token_ok,
)

HERE = Path(__file__).parent


@dataclass(frozen=True)
class UiSettings:
    store: str | None = None
    token: str | None = None
    read_only: bool = False
    host: str = "127.0.0.1"  # the address served: on loopback, Host must name loopback

    @property
    def allowed_hosts(self) -> list[str]:
        """Host headers accepted. Without a token on loopback, only loopback names: a
        page elsewhere cannot rebind its own domain to 127.0.0.1 and read the UI."""
        if self.token:
            return ["*"]
        return ["127.0.0.1", "localhost", "::1", "[::1]", self.host]

    @property
    def who(self) -> str:
        """Who a change made through this UI is recorded as."""
        return "ui (token holder)" if self.token else "ui"


def score(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _environment() -> jinja2.Environment:
    """The UI's templates, then the report's (the run page places ``run_report.html``)."""
    # cells as the CLI's tables print them
    from gepa_trace.cli.examples import _short
    from gepa_trace.cli.traces import _duration, _when
    from gepa_trace.report.html import environment

    env = environment(HERE / "templates")
    env.filters.update(when=_when, duration=_duration, score=score, short=_short)
    return env


class Ui:
    """What every route reads: the settings, the store and the templates."""

    def __init__(self, settings: UiSettings):
        self.settings = settings
        self.env = _environment()
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.settings.store)
        return self._store

    def page(self, request: Request, template: str, status_code: int = 200,
             **context: Any) -> HTMLResponse:
        def url(path: str, **params: Any) -> str:
            kept = {k: v for k, v in params.items() if v not in (None, "", False)}
            return path + ("?" + urlencode(kept) if kept else "")

        html = self.env.get_template(template).render(
            request=request, csrf=csrf_token(request), read_only=self.settings.read_only,
            who=self.settings.who, url=url, **context)
        return HTMLResponse(html, status_code=status_code)


def ui_of(request: Request) -> Ui:
    return request.app.state.ui


def mutating(handler: Callable[[Request, Any], Response]) -> Callable:
    """A POST endpoint: the form must pass the CSRF check before ``handler(request,
    form)`` runs (in a thread: the store is synchronous)."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        form = await request.form()
        why = csrf_refusal(request, form.get("csrf"))
        if why is not None:
            return ui_of(request).page(request, "error.html", 403, message=why)
        return await run_in_threadpool(handler, request, form)

    return endpoint


_STATUS = ((NotFoundError, 404), (ReviewRequired, 409), (GateRefused, 409), (FeedbackError, 400),
           (ConfigError, 400))


async def _error_page(request: Request, exc: Exception) -> Response:
    status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)
    return ui_of(request).page(request, "error.html", status, message=str(exc))


class TokenGate(BaseHTTPMiddleware):
    """With a token: ``?token=T`` sets the token cookie and redirects to the page without
    it; any request without the token gets 401. Sets the CSRF cookie when a page made one."""

    async def dispatch(self, request: Request, call_next: Callable) -> Response:
        token = request.app.state.ui.settings.token
        given = request.query_params.get("token")
        if token and given is not None:
            if not same_token(given, token):
                return PlainTextResponse("wrong token", status_code=401)
            response: Response = RedirectResponse(request.url.remove_query_params("token"),
                                                  status_code=303)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return response
        if not token_ok(request, token):
            return PlainTextResponse("this UI needs its token: open it with ?token=T once, "
                                     "or send Authorization: Bearer T", status_code=401)
        response = await call_next(request)
        new = getattr(request.state, "new_csrf", None)
        if new:
            response.set_cookie(CSRF_COOKIE, new, httponly=True, samesite="strict")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; img-src 'self' data:; "
                                    "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'")
        return response


def _report_css(request: Request) -> Response:
    """The static report's stylesheet: the UI and the report share one design."""
    from gepa_trace.report.html import CSS

    return Response(CSS, media_type="text/css")


def create_app(settings: UiSettings) -> Starlette:
    """The UI's application. A read-only UI has no mutating route: every POST is 405."""
    from gepa_trace.ui import routes_examples, routes_prompts, routes_runs, routes_traces

    routes = [Route("/", lambda request: RedirectResponse("/traces", status_code=303)),
              Route("/assets/report.css", _report_css),
              Mount("/static", StaticFiles(directory=HERE / "static"), name="static")]
    for module in (routes_traces, routes_examples, routes_runs, routes_prompts):
        routes.extend(module.pages())
        if not settings.read_only:
            routes.extend(module.actions())
    app = Starlette(routes=routes,
                    middleware=[Middleware(TrustedHostMiddleware,
                                           allowed_hosts=settings.allowed_hosts),
                                Middleware(TokenGate)],
                    exception_handlers={GepaTraceError: _error_page})
    app.state.ui = Ui(settings)
    return app
