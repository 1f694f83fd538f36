"""Who may use the UI and how a form proves it came from the UI.

- Loopback by default: binding any other address needs a token (``check_bind``). On
  loopback without a token, a request must name a loopback host (``Host``), so a web
  page cannot rebind its domain to 127.0.0.1 and read the UI (``UiSettings``).
- With a token, every request must carry it: ``Authorization: Bearer T``, or the
  ``gepa_ui_token`` cookie that ``/?token=T`` sets once (HttpOnly, SameSite=Strict).
- Every mutating request (POST) must also pass the CSRF check: the hidden ``csrf``
  field of the form equals the per-browser ``gepa_ui_csrf`` cookie (double submit), and
  a request a browser marks cross-site (``Sec-Fetch-Site``) or from another ``Origin``
  is refused whatever it carries.
- ``--read-only`` registers no mutating route at all (``ui.app``), so there is nothing
  to get past.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets

from starlette.requests import Request

from gepa_trace.errors import ConfigError

TOKEN_COOKIE = "gepa_ui_token"
CSRF_COOKIE = "gepa_ui_csrf"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise ConfigError(f"--host {host} is not a loopback address: give --token T so "
                          "that only people with the token can use the UI")


def same_token(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def token_ok(request: Request, token: str | None) -> bool:
    """Whether the request carries the UI's token (always true when there is none)."""
    if not token:
        return True
    given = request.cookies.get(TOKEN_COOKIE, "")
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return same_token(given, token)


def csrf_token(request: Request) -> str:
    """This browser's CSRF token: its cookie's, or a new one (set by the response)."""
    existing = request.cookies.get(CSRF_COOKIE)
    if existing and len(existing) >= 32:
        return existing
    if not hasattr(request.state, "new_csrf"):
        request.state.new_csrf = secrets.token_urlsafe(32)
    return request.state.new_csrf


def csrf_refusal(request: Request, form_value: str | None) -> str | None:
    """Why a mutating request fails the CSRF check, or None when it passes."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site})"
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin != expected:
            return f"request from another origin refused ({origin})"
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie or not form_value or not hmac.compare_digest(cookie, form_value):
        return "missing or wrong CSRF token: reload the page and submit the form again"
    return None
