"""Open a report in headless Chromium and take a full-page screenshot, collecting every
console message, uncaught exception and network request on the way.

It speaks the DevTools protocol over ``--remote-debugging-pipe`` (NUL-separated JSON on
file descriptors 3 and 4), so it needs nothing but a Chromium binary: no websocket
library, no driver. Used by the browser test and by ``python -m
gepa_trace.report.screenshot``.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gepa_trace.errors import GepaTraceError, MissingDependency

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# The flags the brief for headless runs as root asks for: no sandbox (root), no GPU, and
# nothing that phones home.
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--disable-extensions", "--hide-scrollbars", "--mute-audio",
          "--remote-debugging-pipe")


class BrowserError(GepaTraceError):
    """Chromium could not load or capture the page."""


def find_chromium() -> str | None:
    """The path of a Chromium/Chrome binary on PATH, or None."""
    for name in _CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    """What happened while the page loaded.

    ``console``: (level, text) of every console message; ``exceptions``: uncaught errors;
    ``log_errors``: browser log entries of level error (failed loads, blocked content);
    ``requests``: every URL the page asked for (the page itself included).
    """

    url: str
    console: list[tuple[str, str]] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    width: int = 0
    height: int = 0

    @property
    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors, as text."""
        out = [f"console.{lvl}: {text}" for lvl, text in self.console
               if lvl in ("error", "assert")]
        return out + [f"uncaught: {e}" for e in self.exceptions] + self.log_errors

    @property
    def external_requests(self) -> list[str]:
        """Requests for anything but the page itself and inline data."""
        return [u for u in self.requests if u != self.url and not u.startswith("data:")]


class _Pipe:
    """A DevTools connection over Chromium's debugging pipe."""

    def __init__(self, proc: subprocess.Popen, write_fd: int, read_fd: int):
        self.proc = proc
        self.write_fd = write_fd
        self.read_fd = read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        want = self.next_id
        deadline = time.monotonic() + timeout
        while True:
            for reply in self._read(deadline, method):
                if reply.get("id") == want:
                    if "error" in reply:
                        raise BrowserError(f"{method}: {reply['error'].get('message')}")
                    return reply.get("result", {})
                self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.extend(self._read(deadline, method))

    def drain(self, seconds: float) -> None:
        """Collect the events that arrive within ``seconds``."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.extend(self._read(deadline, "events"))
        except TimeoutError:
            return

    def _read(self, deadline: float, what: str) -> list[dict[str, Any]]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"Chromium did not answer {what} in time")
        ready, _w, _x = select.select([self.read_fd], [], [], remaining)
        if not ready:
            raise TimeoutError(f"Chromium did not answer {what} in time")
        chunk = os.read(self.read_fd, 1 << 20)
        if not chunk:
            raise BrowserError(f"Chromium exited (code {self.proc.poll()}) while waiting "
                               f"for {what}")
        self.buffer += chunk
        *messages, self.buffer = self.buffer.split(b"\0")
        return [json.loads(m) for m in messages if m]


def _text_of(args: list[dict[str, Any]]) -> str:
    return " ".join(str(a.get("value", a.get("description", a.get("type", "")))) for a in args)


def open_page(html_path: str | os.PathLike, screenshot: str | os.PathLike | None = None, *,
              width: int = 1280, max_height: int = 16000, timeout: float = 60.0,
              chromium: str | None = None) -> PageCheck:
    """Load ``html_path`` in headless Chromium; return what the page did, and write a
    full-page PNG to ``screenshot`` if given (at most ``max_height`` pixels tall).

    Raises ``MissingDependency`` when no Chromium is installed, ``BrowserError`` or
    ``TimeoutError`` when it fails to load the page.
    """
    binary = chromium or find_chromium()
    if binary is None:
        raise MissingDependency("no Chromium found on PATH; install it with "
                                "`apt-get install chromium` (Debian) to screenshot reports")
    url = Path(html_path).resolve().as_uri()
    profile = tempfile.mkdtemp(prefix="gepa-trace-chromium-")
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()

    def wire_fds() -> None:
        # In the child: Chromium reads fd 3 and writes fd 4. Move both ends out of the
        # way first, since either may itself be 3 or 4; close_fds runs after this and
        # keeps only pass_fds.
        high_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
        high_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
        os.dup2(high_r, 3)
        os.dup2(high_w, 4)

    proc = subprocess.Popen(
        [binary, *_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},900",
         "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # Chrome's debugging pipe wants fds 3 and 4 in the child, moved there before exec
        preexec_fn=wire_fds, pass_fds=(3, 4), close_fds=True)  # noqa: PLW1509
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    pipe = _Pipe(proc, to_chrome_w, from_chrome_r)
    check = PageCheck(url)
    try:
        targets = pipe.send("Target.getTargets", timeout=timeout)["targetInfos"]
        page = next((t for t in targets if t.get("type") == "page"), None)
        target_id = (page["targetId"] if page else
                     pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"])
        session = pipe.send("Target.attachToTarget", {"targetId": target_id,
                                                      "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            pipe.send(f"{domain}.enable", session=session)
        pipe.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                  session=session)
        pipe.send("Page.navigate", {"url": url}, session=session, timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            # A load event may still be about:blank's (under load it can finish late);
            # wait until the document that finished loading is ours.
            pipe.wait_for("Page.loadEventFired", timeout=max(0.1, deadline - time.monotonic()))
            state = pipe.send("Runtime.evaluate", {
                "expression": "document.readyState + ' ' + location.href",
                "returnByValue": True}, session=session)
            if state.get("result", {}).get("value") == f"complete {url}":
                break
        pipe.drain(0.5)  # late console messages
        metrics = pipe.send("Page.getLayoutMetrics", session=session)
        size = metrics.get("cssContentSize") or metrics.get("contentSize") or {}
        check.width = int(size.get("width", width))
        check.height = min(max_height, int(size.get("height", 900)) + 1)
        if screenshot is not None:
            pipe.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": check.height, "deviceScaleFactor": 1,
                       "mobile": False}, session=session)
            shot = pipe.send("Page.captureScreenshot",
                             {"format": "png", "captureBeyondViewport": True,
                              "clip": {"x": 0, "y": 0, "width": width,
                                       "height": check.height, "scale": 1}},
                             session=session, timeout=timeout)
            out = Path(screenshot)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(base64.b64decode(shot["data"]))
        pipe.drain(0.2)
        _collect(pipe.events, check)
        try:
            pipe.send("Browser.close", timeout=5)
        except (BrowserError, TimeoutError):
            pass
    finally:
        os.close(to_chrome_w)
        os.close(from_chrome_r)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    return check


def _collect(events: list[dict[str, Any]], check: PageCheck) -> None:
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled":
            check.console.append((params.get("type", "log"), _text_of(params.get("args", []))))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exc = details.get("exception", {})
            check.exceptions.append(exc.get("description") or details.get("text", "error"))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                check.log_errors.append(f"{entry.get('source')}: {entry.get('text')} "
                                        f"{entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            check.requests.append(params.get("request", {}).get("url", ""))
