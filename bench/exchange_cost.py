"""Server CPU per call of the upstream exchange alone, in one process, against the fake upstream.

    PYTHONPATH=src python bench/exchange_cost.py [--calls 3000] [--rounds 5]

Three ways to send the same store request from an asyncio event loop, sequentially, one at a time:

- ``danube``: ``DanubeClient.store_credential`` as the tool calls it (httpx2's transport over an
  httpcore2 pool, the answer checked, the scrubber run on the service name);
- ``httpx2``: ``httpx2.AsyncClient.post`` + ``response.json()``, what the bare reference server's
  tool does (``reference_server.py``);
- ``raw``: one keep-alive asyncio stream, pre-built request bytes, the answer read by
  Content-Length: the floor any HTTP client sits on.

Process CPU (all threads) per call, medians over interleaved rounds. Puts the stdio target of issue
10 in proportion: the whole call of the bare 2.x server (``stdio_calls.py``) against what the
exchange alone costs. Nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx2

from _common import API_KEY, SECRET, upstream
from danube_mcp.danube.client import DanubeClient
from danube_mcp.danube.models import StoreRequest

BODY = {"service_id": "svc_bench_001", "credential_type": "bearer", "credential_value": SECRET}


async def _measure(send: Callable[[], Awaitable[object]], calls: int) -> float:
    for _ in range(50):  # warm: connections open, caches filled
        await send()
    t0 = time.process_time()
    for _ in range(calls):
        await send()
    return (time.process_time() - t0) / calls * 1e3


async def _run(url: str, calls: int, rounds: int) -> dict[str, list[float]]:
    danube = DanubeClient(base_url=url, api_key=API_KEY)
    request = StoreRequest(BODY["service_id"], "bearer", BODY["credential_value"])
    plain = httpx2.AsyncClient(base_url=url, headers={"danube-api-key": API_KEY}, timeout=30.0)
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    raw_body = json.dumps(BODY).encode()
    raw_request = (
        f"POST /v1/credentials/store HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"danube-api-key: {API_KEY}\r\ncontent-length: {len(raw_body)}\r\n\r\n"
    ).encode() + raw_body

    async def via_danube() -> object:
        return await danube.store_credential(request)

    async def via_httpx2() -> object:
        r = await plain.post("/v1/credentials/store", json=BODY)
        r.raise_for_status()
        return r.json()

    async def via_raw() -> object:
        writer.write(raw_request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        return json.loads(await reader.readexactly(length))

    sides = {"danube": via_danube, "httpx2": via_httpx2, "raw": via_raw}
    out: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides)
    for r in range(rounds):
        for name in order if r % 2 == 0 else reversed(order):
            out[name].append(await _measure(sides[name], calls))
    writer.close()
    await plain.aclose()
    await danube.aclose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with upstream() as up:
        results = asyncio.run(_run(up.url, args.calls, args.rounds))
    print(f"{'exchange':10} {'CPU ms/call (median)':>21} {'range':>15}")
    for name, values in results.items():
        print(f"{name:10} {statistics.median(values):21.3f} {min(values):7.3f}-{max(values):.3f}")


if __name__ == "__main__":
    main()
