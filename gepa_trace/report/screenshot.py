"""Screenshot a report: ``python -m gepa_trace.report.screenshot report.html docs/report.png``.

Loads the page in headless Chromium (see ``browser.open_page``), writes a full-page PNG,
and exits non-zero if the page logged a console error, threw, or asked for anything
outside the file itself.
"""

from __future__ import annotations

import argparse
import sys

from gepa_trace.errors import GepaTraceError
from gepa_trace.report.browser import open_page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gepa_trace.report.screenshot",
        description="Full-page PNG of an HTML report, taken with headless Chromium.",
        epilog="Example: python -m gepa_trace.report.screenshot report.html docs/report.png")
    parser.add_argument("html", help="the report file")
    parser.add_argument("png", help="where to write the screenshot")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in pixels")
    parser.add_argument("--max-height", type=int, default=16000,
                        help="cut the page at this height in pixels")
    args = parser.parse_args(argv)
    try:
        check = open_page(args.html, args.png, width=args.width, max_height=args.max_height)
    except (GepaTraceError, TimeoutError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    problems = check.errors + [f"external request: {u}" for u in check.external_requests]
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{args.png} ({check.width}x{check.height})", file=sys.stderr)
    print(args.png)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
