"""The gateway's command line: `python -m ml_gateway` / gateway.pex."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

from ml_gateway.proxy import Gateway, log_event
from ml_http.ready import write_ready_file


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ml-gateway", description="The local gateway: one port for every model deployed here, routed by host name.")
    parser.add_argument("--routes", type=Path, required=True, help="The route table (JSON) to serve and watch.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    parser.add_argument("--port", type=int, default=8480, help="Port to listen on; 0 picks a free one.")
    parser.add_argument("--read-timeout", type=float, default=600.0,
                        help="Seconds to wait for a backend's response (then 504).")
    parser.add_argument("--shutdown-grace", type=float, default=30.0,
                        help="Seconds to finish requests in progress after SIGTERM.")
    parser.add_argument("--ready-file", help="Write the bound URL to this file once listening.")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> int:
    gateway = Gateway(args.routes, read_timeout=args.read_timeout)
    gateway.reload()
    try:
        port = await gateway.start(args.host, args.port)
    except OSError as e:
        print(json.dumps({"event": "failed", "error": f"cannot listen on {args.host}:{args.port}: {e}"}),
              file=sys.stderr, flush=True)
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, gateway.reload)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.ensure_future(gateway.watch_routes())
    url = f"http://{args.host}:{port}"
    log_event("listening", url=url, pid=os.getpid(), generation=gateway.table.generation)
    if args.ready_file:
        write_ready_file(args.ready_file, url)
    await stop.wait()
    watcher.cancel()
    await gateway.stop(args.shutdown_grace)
    log_event("stopped", requests=gateway.requests, retries=gateway.retries)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=os.environ.get("ML_LOG_LEVEL", "INFO"), stream=sys.stderr, format="%(message)s")
    args = parse_args(argv)
    try:
        from uvloop import run
    except ImportError:  # the serving environment has it; plain asyncio also works
        run = asyncio.run
    return run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
