"""Who may use the web UI: loopback unless a token is given, the token on every
request, a CSRF check on every form, and no mutating route at all when read-only."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient
from ui_store import build

from gepa_trace.cli import main
from gepa_trace.ui import UiSettings, create_app
from gepa_trace.ui.security import check_bind


@pytest.fixture
def store(sqlite_url):
    return sqlite_url, build(sqlite_url)


def client(url: str, **settings) -> TestClient:
    return TestClient(create_app(UiSettings(store=url, **settings)),
                      base_url="http://127.0.0.1:6007")


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_non_loopback_bind_without_token_refuses_to_start(sqlite_url):
    result = CliRunner().invoke(main, ["ui", "--store", sqlite_url, "--host", "0.0.0.0"])
    assert result.exit_code == 1
    assert "not a loopback address: give --token" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_loopback_needs_no_token_and_other_hosts_need_one():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        check_bind(host, None)
    check_bind("0.0.0.0", "secret")
    with pytest.raises(Exception, match="loopback"):
        check_bind("192.168.1.10", None)


def test_ui_on_a_missing_store_exits_3(tmp_path):
    result = CliRunner().invoke(main, ["ui", "--store", f"sqlite:///{tmp_path / 'no.db'}"])
    assert result.exit_code == 3


def test_read_only_ui_refuses_every_mutating_request(store):
    from gepa_trace.store.queries import get_trace

    url, ids = store
    ui = client(url, read_only=True)
    before = len(get_trace(url, ids["good"]).feedback)
    page = ui.get(f"/traces/{ids['good']}")
    assert page.status_code == 200 and "feedback-form" not in page.text
    for path in (f"/traces/{ids['good']}/feedback", "/examples/mark", "/prompts/promote"):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            answer = ui.request(method, path, data={"score": "0", "csrf": "x"})
            # no such route at all: 404 where no page has that path, else 405
            assert answer.status_code in (404, 405), (method, path)
    assert len(get_trace(url, ids["good"]).feedback) == before
    assert not [r for r in ui.app.routes if "POST" in (getattr(r, "methods", None) or ())]


def test_form_without_the_csrf_token_is_refused_and_nothing_is_stored(store):
    from gepa_trace.store.queries import get_trace

    url, ids = store
    ui = client(url)
    ui.get(f"/traces/{ids['good']}")  # the browser has its CSRF cookie now
    before = len(get_trace(url, ids["good"]).feedback)
    refused = ui.post(f"/traces/{ids['good']}/feedback", data={"score": "0", "csrf": "forged"})
    assert refused.status_code == 403 and "CSRF" in refused.text
    missing = ui.post(f"/traces/{ids['good']}/feedback", data={"score": "0"})
    assert missing.status_code == 403
    assert len(get_trace(url, ids["good"]).feedback) == before


def test_cross_site_request_is_refused_even_with_the_right_csrf_token(store):
    url, ids = store
    ui = client(url)
    token = csrf_of(ui.get(f"/traces/{ids['good']}").text)
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://evil.example"}):
        answer = ui.post(f"/traces/{ids['good']}/feedback", data={"score": "0", "csrf": token},
                         headers=headers)
        assert answer.status_code == 403, headers


def test_same_origin_form_with_its_csrf_token_is_recorded(store):
    url, ids = store
    ui = client(url)
    token = csrf_of(ui.get(f"/traces/{ids['good']}").text)
    answer = ui.post(f"/traces/{ids['good']}/feedback",
                     data={"score": "0.5", "comment": "ok", "csrf": token},
                     headers={"Origin": "http://127.0.0.1:6007",
                              "Sec-Fetch-Site": "same-origin"}, follow_redirects=False)
    assert answer.status_code == 303


def test_with_a_token_every_request_needs_it(store):
    url, ids = store
    ui = client(url, token="s3cret")
    assert ui.get("/traces").status_code == 401
    assert ui.get("/traces?token=wrong").status_code == 401
    assert ui.get("/traces", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    # ?token=T once sets the cookie and drops the token from the address
    first = ui.get("/traces?token=s3cret", follow_redirects=False)
    assert first.status_code == 303 and "token" not in first.headers["location"]
    assert ui.get("/traces").status_code == 200
    page = ui.get(f"/traces/{ids['good']}")
    assert "by ui (token holder)" in page.text
    other = client(url, token="s3cret")
    assert other.post(f"/traces/{ids['good']}/feedback",
                      data={"score": "0", "csrf": csrf_of(page.text)}).status_code == 401


def test_ui_command_serves_the_pages_on_loopback(store):
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gepa = str(Path(sys.executable).parent / "gepa-trace")
    proc = subprocess.Popen([gepa, "ui", "--store", store[0], "--port", str(port),
                             "--read-only"], stderr=subprocess.PIPE, text=True)
    try:
        deadline, page = time.monotonic() + 20, None
        while page is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/traces", timeout=2) as r:
                    page = r.read().decode()
            except OSError:
                time.sleep(0.2)
        assert page is not None and "read-only" in page and "tr class=\"run\"" in page
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert f"gepa-trace ui on http://127.0.0.1:{port}/ (read-only)" in err


def test_a_busy_port_is_one_line_and_exit_1(store):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(main, ["ui", "--store", store[0], "--port", str(port)])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: cannot listen on 127.0.0.1:{port}: " \
                                    "Address already in use"


def test_loopback_ui_refuses_a_host_header_naming_another_domain(store):
    url, _ = store
    rebound = TestClient(create_app(UiSettings(store=url)), base_url="http://evil.example:6007")
    assert rebound.get("/traces").status_code == 400
    assert client(url).get("/traces").status_code == 200
    assert TestClient(create_app(UiSettings(store=url)),
                      base_url="http://localhost:6007").get("/traces").status_code == 200
    with_token = TestClient(create_app(UiSettings(store=url, token="t", host="0.0.0.0")),
                            base_url="http://ui.example.com")
    assert with_token.get("/traces", headers={"Authorization": "Bearer t"}).status_code == 200


def _form_through_a_tls_proxy(store, *extra: str) -> int:
    """`gepa-trace ui --token T` served behind a TLS-terminating proxy on this machine:
    the status of a same-origin form post as the proxy passes it on (the browser's
    Origin is https://ui.example.com; the proxy says so in X-Forwarded-Proto)."""
    import http.client
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    url, ids = store
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gepa = str(Path(sys.executable).parent / "gepa-trace")
    proc = subprocess.Popen([gepa, "ui", "--store", url, "--port", str(port), "--token", "T",
                             *extra], stderr=subprocess.PIPE, text=True)
    proxied = {"Host": "ui.example.com", "X-Forwarded-Proto": "https",
               "X-Forwarded-For": "203.0.113.9", "Authorization": "Bearer T"}
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", f"/traces/{ids['good']}", headers=proxied)
                break
            except OSError:
                assert time.monotonic() < deadline, "the UI did not start"
                time.sleep(0.2)
        page = conn.getresponse()
        body = page.read().decode()
        cookies = "; ".join(value.split(";")[0] for name, value in page.getheaders()
                            if name.lower() == "set-cookie")
        conn.request("POST", f"/traces/{ids['good']}/feedback",
                     body=f"score=0.5&comment=ok&csrf={csrf_of(body)}",
                     headers={**proxied, "Origin": "https://ui.example.com",
                              "Sec-Fetch-Site": "same-origin", "Cookie": cookies,
                              "Content-Type": "application/x-www-form-urlencoded"})
        answer = conn.getresponse()
        answer.read()
        return answer.status
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_forms_work_behind_a_tls_proxy_on_this_machine(store):
    assert _form_through_a_tls_proxy(store) == 303


def test_only_a_trusted_proxy_is_believed_about_https(store):
    # the proxy on 127.0.0.1 is no longer trusted: its X-Forwarded-Proto is ignored, the
    # request looks like http://, and the browser's https:// origin does not match
    assert _form_through_a_tls_proxy(store, "--trusted-proxy", "10.0.0.7") == 403
