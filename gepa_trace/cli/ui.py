"""`gepa-trace ui`: serve the web UI (``gepa_trace.ui``) with uvicorn."""

from __future__ import annotations

import click

from gepa_trace.cli.common import handles_errors, progress, store_option


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback needs --token.")
@click.option("--port", default=6007, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port).")
@click.option("--token", default=None, metavar="T", envvar="GEPA_TRACE_UI_TOKEN",
              help="Require this token: open the UI once with ?token=T (sets a cookie) or "
                   "send Authorization: Bearer T. Also $GEPA_TRACE_UI_TOKEN.")
@click.option("--read-only", is_flag=True,
              help="Serve pages only: no feedback, marks or promotion (every POST is 405).")
@click.option("--trusted-proxy", "trusted_proxies", multiple=True, metavar="ADDR",
              help="A reverse proxy (IP or network) whose X-Forwarded-Proto and "
                   "X-Forwarded-For are believed; repeat for more (default: 127.0.0.1, "
                   "or $FORWARDED_ALLOW_IPS). Behind a TLS proxy the browser's forms come "
                   "from https://..., which the UI must see to accept them.")
@store_option
@handles_errors
def ui(host: str, port: int, token: str | None, read_only: bool,
       trusted_proxies: tuple[str, ...], store: str | None) -> None:
    """Browse traces, examples, components and runs in a browser; review and promote.

    Traces with filters (agent, time, feedback, correction, error, prompt version,
    text); a trace's span tree with each LLM call's messages; feedback as a reviewer;
    examples with exclude/golden marks; prompt versions and diffs; runs with live
    progress and their report; promotion behind the export gate's review.

    \b
    Examples:
      gepa-trace ui --store sqlite:///gepa_trace.db
      gepa-trace ui --host 0.0.0.0 --token "$(openssl rand -hex 16)"
      gepa-trace ui --read-only
      gepa-trace ui --host 0.0.0.0 --token "$T" --trusted-proxy 10.0.0.7   # behind TLS
    """
    from gepa_trace.store import open_store
    from gepa_trace.ui.security import check_bind

    check_bind(host, token)
    open_store(store)  # no store there: exit 3 now, not a 500 on the first page
    import uvicorn

    from gepa_trace.ui import UiSettings, create_app

    sock = _listen(host, port)  # ours, so a busy port is one line and --port 0 is known
    port = sock.getsockname()[1]
    app = create_app(UiSettings(store=store, token=token, read_only=read_only, host=host))
    shown = f"[{host}]" if ":" in host else host
    progress(f"gepa-trace ui on http://{shown}:{port}/"
             + (" (read-only)" if read_only else "") + (" (token required)" if token else ""))
    # uvicorn takes the scheme and client from X-Forwarded-* of these addresses only
    proxies = ",".join(trusted_proxies) or None  # None: $FORWARDED_ALLOW_IPS or 127.0.0.1
    uvicorn.Server(uvicorn.Config(app, log_level="warning", proxy_headers=True,
                                  forwarded_allow_ips=proxies)).run(sockets=[sock])


def _listen(host: str, port: int):
    import socket

    from gepa_trace.errors import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock
