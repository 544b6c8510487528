"""`sslc-dashboard`: optuna-dashboard on a search's study, live while the search runs (its WSGI app, served here).

sslc-dashboard runs/hubert30
sslc-dashboard sqlite:////abs/path/study.db --port 8081
"""

from __future__ import annotations

import signal
import sys

from sslc.cli.common import ArgumentParser, cli_entry


def build_parser():
    parser = ArgumentParser(
        prog="sslc-dashboard",
        description="Serve optuna-dashboard for a search (its run directory, or an Optuna storage URL).",
    )
    parser.add_argument("target", metavar="RUN_DIR_OR_STORAGE", help="run directory or storage URL")
    parser.add_argument("--port", type=int, default=8080, help="default: %(default)s")
    parser.add_argument("--host", default="127.0.0.1", help="default: %(default)s (this machine only)")
    return parser


def _serve(app, host: str, port: int):
    """A threaded WSGI server bound now (so a taken port is an error before anything is printed)."""
    import socket
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True  # the page polls several endpoints at once
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args):  # a line per request would bury the URL printed above
            pass

    return make_server(host, port, app, server_class=Server, handler_class=QuietHandler)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sslc.errors import UserError
    from sslc.runs.dashboard_view import DashboardStorage
    from sslc.runs.storage import make_storage, resolve_storage

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be 1..65535, got {args.port}")
    url, name = resolve_storage(args.target)
    storage = make_storage(url, kind=DashboardStorage)  # shows the budget's feasibility
    import optuna_dashboard

    try:
        server = _serve(optuna_dashboard.wsgi(storage), args.host, args.port)
    except OSError as error:  # the port is taken, or the host cannot be bound
        raise UserError(f"cannot serve on {args.host}:{args.port}: {error.strerror or error}") from None
    shown = "localhost" if args.host in ("0.0.0.0", "::") else args.host
    print(f"optuna-dashboard for {name or url}: open http://{shown}:{args.port}/dashboard/ (Ctrl-C to stop)",
          flush=True)
    # A process started in the background by a non-interactive shell (`sslc-dashboard RUN &` in a script) inherits
    # SIGINT as ignored, and Ctrl-C / `kill -INT` would then never stop it: take the default handler back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # the normal way to stop a server
        pass
    finally:
        server.server_close()
    print("dashboard stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
