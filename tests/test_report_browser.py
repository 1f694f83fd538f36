"""Acceptance 3: the report opens in headless Chromium with no console errors, asks for
nothing outside itself, and a full-page screenshot of it is produced.

Skipped only when no Chromium binary is on PATH (``.ci/run`` installs Debian's).
"""

from __future__ import annotations

import struct

import pytest
from test_report import run_engine

from gepa_trace.report import write_report
from gepa_trace.report.browser import find_chromium, open_page
from gepa_trace.report.screenshot import main as screenshot_main

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="no Chromium on PATH (apt-get install chromium); the report's browser check "
           "needs a real browser")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    base = tmp_path_factory.mktemp("browser")
    url = f"sqlite:///{base / 'store.db'}"
    run_id, _result = run_engine(url)
    return write_report(url, run_id, base / "report.html")


def test_report_opens_in_chromium_without_console_errors(report_file, tmp_path):
    shot = tmp_path / "report.png"
    check = open_page(report_file, shot, width=1280)
    assert check.errors == []
    assert check.exceptions == [] and not [c for c in check.console if c[0] == "error"]
    assert check.external_requests == []
    assert check.requests == [check.url]  # the page loaded, and nothing else
    width, height = png_size(shot)
    assert width == 1280
    assert height == check.height > 2000  # the whole page, not just the first screen


def test_browser_check_catches_console_errors_throws_and_external_requests(tmp_path):
    # The control: the same check on a page that misbehaves must report it, so the
    # test above cannot pass by seeing nothing.
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
                   '<img src="http://192.0.2.1/x.png"><script>console.error("boom");'
                   'throw new Error("kaput");</script></body></html>', encoding="utf-8")
    check = open_page(bad)
    assert any("boom" in e for e in check.errors)
    assert any("kaput" in e for e in check.errors)
    assert check.external_requests == ["http://192.0.2.1/x.png"]


def test_screenshot_command_writes_a_png_and_prints_its_path(report_file, tmp_path, capsys):
    out = tmp_path / "docs" / "report.png"
    assert screenshot_main([str(report_file), str(out), "--max-height", "1200"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert png_size(out) == (1280, 1200)


def test_screenshot_command_fails_on_a_page_with_errors(tmp_path, capsys):
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><body><script>console.error('x')</script></body>",
                   encoding="utf-8")
    assert screenshot_main([str(bad), str(tmp_path / "bad.png")]) == 1
    assert "console.error: x" in capsys.readouterr().err
