"""Starts the model server: workers from the model's environment, HTTP (or Lambda) in front.

    server.pex --manifest '<json>' --worker-command '<json list>' [--port 8080] ...

Every option also reads an environment variable (ML_PORT, ML_WORKERS, ...) so that an image can
be tuned without changing its command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

from ml_contract.model_settings import DEFAULT_TIMEOUT_SECONDS
from ml_contract.package_layout import CONTAINER_PORT
from ml_http.ready import write_ready_file
from ml_http.server import HttpLimits, HttpProtocol
from ml_runtime import aws_secrets, r_worker
from ml_runtime.shared_cache import CACHE_DIR_ENV, SharedCache, bound_from_env, new_directory
from ml_serving.app import ModelApp
from ml_serving.metrics import Metrics
from ml_serving.reload import Rebuild, Reloader, ReloadSources
from ml_serving.sizing import visible_gpus, worker_env
from ml_serving.workers import WorkerPool

logger = logging.getLogger("ml_serving")


class ModelLoadError(Exception):
    pass


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="ml-serve", description="Serve one model over HTTP.")
    parser.add_argument("--manifest", required=True, help="The model's manifest, as JSON.")
    parser.add_argument("--worker-command", required=True,
                        help="JSON list: the command that starts one worker in the model's environment.")
    parser.add_argument("--host", default=env("ML_HOST", "127.0.0.1"), help="Address to listen on (ML_HOST).")
    parser.add_argument("--port", type=int, default=int(env("ML_PORT", env("PORT", str(CONTAINER_PORT)))),
                        help="Port to listen on; 0 picks a free one (ML_PORT, PORT).")
    parser.add_argument("--workers", type=int, default=int(env("ML_WORKERS", "0")) or None,
                        help="Worker processes (ML_WORKERS); default: the model's `workers` (from its "
                             "cpu and gpu; one on Lambda), never the host's core count.")
    parser.add_argument("--threads", type=int, default=int(env("ML_THREADS", "0")) or None,
                        help="Math-library threads per worker (ML_THREADS); default: the model's `threads`.")
    parser.add_argument("--batching", action=argparse.BooleanOptionalAction,
                        default=env("ML_BATCHING", "1") not in ("0", "false", "off"),
                        help="Gather concurrent requests to the endpoints a model declares batchable into one "
                             "model call (ML_BATCHING=0 turns it off).")
    parser.add_argument("--max-queue", type=int, default=int(env("ML_MAX_QUEUE", "64")),
                        help="Requests waiting for a worker before answering 503 (ML_MAX_QUEUE).")
    parser.add_argument("--timeout", type=float, default=float(env("ML_TIMEOUT", "0")) or None,
                        help="Seconds per request before 504 (ML_TIMEOUT); default: the model's `timeout`.")
    limits = HttpLimits()
    parser.add_argument("--max-body-bytes", type=int, default=int(env("ML_MAX_BODY_BYTES", limits.max_body_bytes)),
                        help="Largest request body accepted, else 413 (ML_MAX_BODY_BYTES).")
    parser.add_argument("--max-header-bytes", type=int,
                        default=int(env("ML_MAX_HEADER_BYTES", limits.max_header_bytes)),
                        help="Largest request head (header fields) accepted, else 431 (ML_MAX_HEADER_BYTES); "
                             f"the request target may add {limits.max_url_bytes} bytes, else 414.")
    parser.add_argument("--read-timeout", type=float, default=float(env("ML_READ_TIMEOUT", limits.read_timeout)),
                        help="Seconds from a request's first byte to its last, else 408 (ML_READ_TIMEOUT).")
    parser.add_argument("--idle-timeout", type=float, default=float(env("ML_IDLE_TIMEOUT", limits.idle_timeout)),
                        help="Seconds a kept-alive connection may stay idle before it is closed (ML_IDLE_TIMEOUT).")
    parser.add_argument("--shutdown-grace", type=float, default=float(env("ML_SHUTDOWN_GRACE", "30")),
                        help="Seconds to finish in-flight requests after SIGTERM (ML_SHUTDOWN_GRACE).")
    parser.add_argument("--ready-file", default=env("ML_READY_FILE"),
                        help="Write the bound URL to this file once ready (for scripts and tests).")
    reload = parser.add_argument_group("live reload (`pants run` passes these: ml_serving.reload)")
    reload.add_argument("--reload-root", action="append", default=[], type=Path,
                        help="A source folder of the model's code in the repository: watched, and its files "
                             "overlay the packaged code's; an edit restarts the workers. Repeatable.")
    reload.add_argument("--reload-base", type=Path,
                        help="The packaged code (a packed model.pex) that the source folders overlay.")
    reload.add_argument("--reload-rebuild-file", action="append", default=[], type=Path,
                        help="A file whose change needs a new environment (requirements, lockfile). Repeatable.")
    reload.add_argument("--reload-rebuild-command",
                        help="JSON list: the command that rebuilds the model's package after such a change; "
                             "without it the change is only said.")
    reload.add_argument("--reload-rebuilt-package", type=Path,
                        help="Where the rebuild writes the model's model.pex.")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> int:
    manifest = json.loads(args.manifest)
    # One store for every worker of this server (ml_runtime.shared_cache), gone when it stops.
    cache = SharedCache(Path(new_directory(manifest["name"])), bound_from_env())
    try:
        return await _serve(args, manifest, cache)
    finally:
        shutil.rmtree(cache.directory, ignore_errors=True)


async def _serve(args: argparse.Namespace, manifest: dict, cache: SharedCache) -> int:
    lambda_api = os.environ.get("AWS_LAMBDA_RUNTIME_API")
    # Lambda sends an environment one invocation at a time: more workers only cost memory.
    args.workers = args.workers or (1 if lambda_api else int(manifest.get("workers", 1)))
    threads = args.threads or int(manifest.get("threads", 1))
    gpus = visible_gpus()
    metrics = Metrics(manifest["name"], manifest["version"], shared_cache=cache)
    command = json.loads(args.worker_command)

    def new_pool(overlay: Optional[Path] = None, worker_command: Sequence[str] = command) -> WorkerPool:
        env = {**os.environ, CACHE_DIR_ENV: str(cache.directory)}
        if overlay is not None:  # live reload: the edited code first on the workers' path
            env["PYTHONPATH"] = os.pathsep.join([str(overlay), *filter(None, [env.get("PYTHONPATH")])])
            if manifest.get("runtime") == r_worker.RUNTIME:
                worker_command = r_worker.with_handler(list(worker_command), overlay / manifest["handler"])
        return WorkerPool(
            worker_command,
            count=args.workers,
            env=env,
            worker_env=lambda index: worker_env(index, threads, gpus),
            max_queue=args.max_queue,
            timeout=args.timeout or float(manifest.get("timeout", DEFAULT_TIMEOUT_SECONDS)),
            metrics=metrics,
            batching=args.batching,
        )

    reloader = None
    if args.reload_root and not lambda_api:
        rebuild = (Rebuild(tuple(json.loads(args.reload_rebuild_command)), args.reload_rebuilt_package)
                   if args.reload_rebuild_command and args.reload_rebuilt_package else None)
        reloader = Reloader(None, ReloadSources(tuple(args.reload_root), args.reload_base, tuple(args.reload_rebuild_file)),
                            new_pool, command, rebuild, args.shutdown_grace)
    pool = new_pool(reloader.first_overlay() if reloader else None)
    app = ModelApp(manifest, pool, metrics)
    if reloader:
        reloader.app = app
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    try:
        await pool.start()
    except Exception as e:
        if reloader:
            reloader.close()
        message = f"the model could not be loaded ({e}); the worker's log is above"
        if lambda_api:
            from ml_serving import lambda_runtime

            await lambda_runtime.report_init_error(lambda_api, "ModelLoadError", message)
        raise ModelLoadError(message) from None
    assert pool.description is not None
    app.describe(pool.description)

    if lambda_api:
        from ml_serving import lambda_runtime

        print(json.dumps({"event": "serving", "model": manifest["address"], "mode": "lambda",
                          "workers": args.workers}), flush=True)
        runtime = asyncio.ensure_future(lambda_runtime.run(app, lambda_api))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([runtime, stopping], return_when=asyncio.FIRST_COMPLETED)
        app.accepting = False
        crashed = runtime.done() and not runtime.cancelled() and runtime.exception()
        runtime.cancel()
        stopping.cancel()
        await pool.stop(args.shutdown_grace)
        if crashed:
            logger.error(json.dumps({"event": "lambda_runtime_crashed", "error": repr(crashed)}))
            return 1
        print(json.dumps({"event": "stopped", "model": manifest["address"]}), flush=True)
        return 0

    connections: set = set()
    limits = HttpLimits(max_body_bytes=args.max_body_bytes, max_header_bytes=args.max_header_bytes,
                        read_timeout=args.read_timeout, idle_timeout=args.idle_timeout)
    server = await loop.create_server(
        lambda: HttpProtocol(app.handle, limits, connections), args.host, args.port,
        reuse_address=True, backlog=1024,
    )
    host, port = server.sockets[0].getsockname()[:2]
    url = f"http://{host}:{port}"
    print(json.dumps({"event": "serving", "model": manifest["address"], "url": url,
                      "predict": f"{url}/v{manifest['version']}/predict", "workers": args.workers,
                      "threads": threads, "gpus": gpus}), flush=True)
    if args.ready_file:
        write_ready_file(args.ready_file, url)
    watching = asyncio.ensure_future(reloader.watch()) if reloader else None

    await stop.wait()
    if watching:
        watching.cancel()
    # Graceful stop: refuse new connections, finish what is in flight, then stop the workers.
    app.accepting = False
    server.close()
    deadline = loop.time() + args.shutdown_grace
    pool = app.pool  # the one serving now (live reload swaps it)
    while (pool.in_flight or not pool.queue.empty() or metrics.in_flight) and loop.time() < deadline:
        await asyncio.sleep(0.01)
    for connection in list(connections):
        connection.close_when_idle()
    await pool.stop(max(0.0, deadline - loop.time()))
    if reloader:
        reloader.close()
    print(json.dumps({"event": "stopped", "model": manifest["address"]}), flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=os.environ.get("ML_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(message)s")
    args = parse_args(argv)
    # Access log lines must reach log collectors as they happen, not when a buffer fills.
    sys.stdout.reconfigure(line_buffering=True)
    try:
        from uvloop import run
    except ImportError:  # the locked serving environment has it; plain asyncio also works
        run = asyncio.run
    try:
        # Before any worker starts, so that they inherit them; only names are logged.
        read = aws_secrets.load_into(os.environ)
    except aws_secrets.SecretUnavailable as e:
        print(json.dumps({"event": "failed", "error": str(e)}), file=sys.stderr, flush=True)
        return 1
    if read:
        print(json.dumps({"event": "secrets", "read": read}), file=sys.stderr, flush=True)
    try:
        return run(serve(args))
    except ModelLoadError as e:
        print(json.dumps({"event": "failed", "error": str(e)}), file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
