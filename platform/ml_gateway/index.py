"""The gateway's page for people, `http://ml.<domain>:<port>/`: every deployed model and version,
its image digest, whether it is ready, its recent request rate, and links to its docs and
metrics. Rendered on the server from the route table (no script, nothing fetched elsewhere)."""

from __future__ import annotations

import asyncio
import collections
import html
import time
from typing import Deque, Dict, Mapping, Tuple

from ml_contract.package_layout import READY_PATH
from ml_contract.route_table import RouteBackend, RouteTable

RATE_WINDOW_SECONDS = 60.0
READY_TIMEOUT_SECONDS = 1.0
MAX_REMEMBERED = 100_000  # request times kept per model version, for the rate


class RequestRates:
    """Requests per model version over the last RATE_WINDOW_SECONDS."""

    def __init__(self) -> None:
        self._times: Dict[Tuple[str, int], Deque[float]] = collections.defaultdict(
            lambda: collections.deque(maxlen=MAX_REMEMBERED))

    def record(self, model: str, version: int) -> None:
        self._times[(model, version)].append(time.monotonic())

    def per_second(self, model: str, version: int) -> float:
        times = self._times.get((model, version))
        if not times:
            return 0.0
        since = time.monotonic() - RATE_WINDOW_SECONDS
        while times and times[0] < since:
            times.popleft()
        return len(times) / RATE_WINDOW_SECONDS


async def is_ready(backend: RouteBackend) -> bool:
    """Whether the backend answers its readiness route with 200 (within a second)."""
    host, _, port = backend.address.rpartition(":")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), READY_TIMEOUT_SECONDS)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        writer.write(f"GET {READY_PATH} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        status = await asyncio.wait_for(reader.readline(), READY_TIMEOUT_SECONDS)
        return status.split(b" ")[1:2] == [b"200"]
    except (OSError, asyncio.TimeoutError, IndexError):
        return False
    finally:
        writer.close()


async def readiness(table: RouteTable) -> Mapping[Tuple[str, int], bool]:
    keys = [(model, version) for model, versions in table.models.items() for version in versions]
    answers = await asyncio.gather(*(is_ready(table.models[m][v]) for m, v in keys))
    return dict(zip(keys, answers))


def render(table: RouteTable, port: int, ready: Mapping[Tuple[str, int], bool], rates: RequestRates) -> bytes:
    rows = []
    for model in sorted(table.models):
        versions = table.models[model]
        base = f"http://{model}{table.suffix}:{port}"
        for version in sorted(versions, reverse=True):
            backend = versions[version]
            live = ready.get((model, version), False)
            # The gateway sends unversioned paths to the highest version: the links are its.
            links = (f'<a href="{base}/docs">docs</a> · <a href="{base}/metrics">metrics</a>'
                     if version == max(versions) else "")
            rows.append(
                "<tr>"
                f"<td class=model>{_e(model)}</td><td>v{version}</td>"
                f'<td><code title="{_e(backend.digest)}">{_e(backend.digest[:19] or "-")}</code></td>'
                f'<td class="{"ready" if live else "not-ready"}">{"ready" if live else "not ready"}</td>'
                f"<td class=rate>{rates.per_second(model, version):.2f}/s</td>"
                f"<td><code>{_e(base)}/v{version}/</code></td><td>{links}</td>"
                "</tr>"
            )
    body = "\n".join(rows) or '<tr><td colspan=7>No model is deployed behind this gateway yet: <code>./pants deploy models/&lt;name&gt;:</code></td></tr>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Models on ml.{_e(table.domain)}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #1d2330; }}
table {{ border-collapse: collapse; width: 100%; }} th, td {{ text-align: left; padding: .35em .6em; border-bottom: 1px solid #e1e4ea; }}
.ready {{ color: #2f7d4f; font-weight: 600; }} .not-ready {{ color: #a3322b; font-weight: 600; }}
</style></head>
<body><h1>Models on ml.{_e(table.domain)}</h1>
<p>Route table generation {table.generation}; request rates over the last {RATE_WINDOW_SECONDS:.0f} s.</p>
<table id="models"><thead><tr><th>model</th><th>version</th><th>digest</th><th>readiness</th><th>requests</th><th>URL</th><th>links</th></tr></thead>
<tbody>
{body}
</tbody></table></body></html>
""".encode()


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def is_index(table: RouteTable, host: str, path: str) -> bool:
    """`ml.<domain>` itself (no model label), at its root."""
    return host == table.suffix.lstrip(".") and path in ("/", "/index.html")


