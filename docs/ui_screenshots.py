"""Screenshots of the web UI's main pages for the README, from a demo store.

    .venv/bin/python docs/ui_screenshots.py            # writes docs/ui-*.png

Runs `gepa-trace demo` into a temporary folder, serves `gepa-trace ui` on a free
loopback port, and has headless Chromium (Playwright with the system's Chromium)
capture the traces list filtered to negative feedback, a trace, the examples, a run and
the promotion page. Fails if any page logs a console error.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).parent


def main() -> int:
    import uvicorn
    from playwright.sync_api import sync_playwright

    from gepa_trace.report.browser import find_chromium
    from gepa_trace.ui import UiSettings, create_app

    folder = Path(tempfile.mkdtemp(prefix="gepa-ui-shots-"))
    gepa = str(Path(sys.executable).parent / "gepa-trace")
    done = subprocess.run([gepa, "demo", "--out", str(folder), "--runs", "120",
                           "--budget-rollouts", "160", "--json"], capture_output=True,
                          text=True, check=True)
    run_id = json.loads(done.stdout)["run_id"]
    url = f"sqlite:///{folder / 'demo.db'}"
    shown = subprocess.run([gepa, "runs", "show", run_id, "--store", url, "--json"],
                           capture_output=True, text=True, check=True)
    best_component, best_version = min(json.loads(shown.stdout)["best"]["prompts"].items())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(UiSettings(store=url)),
                                           host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    problems: list[str] = []
    base = f"http://127.0.0.1:{port}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.on("console", lambda m: m.type == "error" and problems.append(m.text))
        page.on("pageerror", lambda e: problems.append(str(e)))

        def shot(path: str, name: str, full: bool = False) -> None:
            page.goto(base + path)
            page.screenshot(path=str(HERE / f"ui-{name}.png"), full_page=full)
            print(HERE / f"ui-{name}.png")

        shot("/traces?feedback=negative", "traces")
        first = page.locator("tr.run a").first.get_attribute("href")
        shot(first + "#calls", "trace")
        shot("/examples", "examples")
        shot(f"/runs/{run_id}", "run")
        shot(f"/prompts/{best_component}/{best_version}/promote", "promote")
        browser.close()
    server.should_exit = True
    shutil.rmtree(folder, ignore_errors=True)
    for p in problems:
        print(f"console error: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
