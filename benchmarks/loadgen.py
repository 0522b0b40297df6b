"""A small closed-loop HTTP load generator: N connections, each sending its next request as soon
as the previous answer arrives. Plain asyncio streams with keep-alive, so that the client uses
little of the CPU that the server under test needs."""

import asyncio
import json
import random
import time
from dataclasses import dataclass


@dataclass
class Load:
    requests: int
    errors: int
    seconds: float
    latencies_s: list[float]

    def summary(self) -> dict[str, float]:
        latencies = sorted(self.latencies_s)

        def percentile(q: float) -> float:
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

        return {
            "requests_per_s": self.requests / self.seconds,
            "p50_ms": percentile(0.50),
            "p99_ms": percentile(0.99),
            "requests": self.requests,
            "errors": self.errors,
        }


def payloads(width: int, count: int = 64, rows: int = 1, seed: int = 0) -> list[bytes]:
    """`count` request bodies, each `rows` rows of `width` numbers in [0, 1]."""
    generator = random.Random(seed)
    return [
        json.dumps(
            {"inputs": [[round(generator.random(), 4) for _ in range(width)] for _ in range(rows)]}
        ).encode()
        for _ in range(count)
    ]


async def _read_response(reader: asyncio.StreamReader) -> int:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionResetError("the server closed the connection")
    status = int(status_line.split()[1])
    length, chunked = 0, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
        elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if not chunked:
        await reader.readexactly(length)
        return status
    while size := int((await reader.readline()).strip(), 16):
        await reader.readexactly(size + 2)
    await reader.readline()
    return status


async def _connection(host, port, path, bodies, offset, deadline, record) -> None:
    """One client: a request, its answer, the next request. A dropped connection (a proxy
    reloading its configuration closes idle ones) counts as an error and is opened again."""
    index = offset
    while time.perf_counter() < deadline:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                body = bodies[index % len(bodies)]
                index += 1
                head = (
                    f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                )
                started = time.perf_counter()
                writer.write(head.encode() + body)
                await writer.drain()
                status = await _read_response(reader)
                record(time.perf_counter() - started, status)
        except (ConnectionError, asyncio.IncompleteReadError):
            record(None, 0)
        finally:
            writer.close()


async def _run(host, port, path, bodies, concurrency, seconds) -> Load:
    latencies: list[float] = []
    errors = 0

    def record(latency: float | None, status: int) -> None:
        nonlocal errors
        if latency is not None:
            latencies.append(latency)
        errors += status != 200

    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(
        *(
            _connection(host, port, path, bodies, i * 7, deadline, record)
            for i in range(concurrency)
        )
    )
    return Load(len(latencies), errors, time.perf_counter() - started, latencies)


def generate(
    url_host: str, port: int, path: str, bodies: list[bytes], concurrency: int, seconds: float
) -> Load:
    return asyncio.run(_run(url_host, port, path, bodies, concurrency, seconds))
