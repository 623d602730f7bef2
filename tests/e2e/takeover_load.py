"""Load for tests/e2e/test_takeover.py, run as its own process (its own interpreter, so
the client's work does not share a GIL with the test or the echo server).

  takeover_load.py echo PORT
      asyncio echo server on 127.0.0.1:PORT; prints "ready" once listening.
  takeover_load.py load HOST:PORT SECONDS RATE LONG LONG_BYTES
      RATE new connections a second for SECONDS, each a short echo of 64-2048 random
      bytes compared by sha256, plus LONG transfers of LONG_BYTES each, paced over the
      whole run and compared by sha256. Prints one JSON line: counts and failures
      (failed_starts: the time.monotonic() at which each failed short one started).
"""

import asyncio
import hashlib
import json
import os
import random
import socket
import sys
import time

CONNECT_TIMEOUT = 10.0
EMPTY = hashlib.sha256(b"").hexdigest()


async def echo_conn(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def serve_echo(port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    server = await asyncio.start_server(echo_conn, sock=sock, backlog=4096)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


async def exchange(host, port, blob, pace=None):
    """Sends `blob`, half-closes, reads the echo; returns the echo's sha256 hex."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
    try:
        got = hashlib.sha256()

        async def read_all():
            while True:
                data = await reader.read(262144)
                if not data:
                    return
                got.update(data)

        reading = asyncio.ensure_future(read_all())
        if pace is None:
            writer.write(blob)
        else:
            chunk, delay = pace
            for i in range(0, len(blob), chunk):
                writer.write(blob[i:i + chunk])
                await writer.drain()
                await asyncio.sleep(delay)
        await writer.drain()
        writer.write_eof()
        await asyncio.wait_for(reading, 60.0)
        return got.hexdigest()
    finally:
        writer.close()


async def short_one(host, port, stats):
    blob = os.urandom(random.randint(64, 2048))
    started = time.monotonic()  # CLOCK_MONOTONIC: the same clock in every namespace
    try:
        digest = await exchange(host, port, blob)
        if digest == EMPTY:  # closed before a byte came back (a balancer's dead server)
            raise ConnectionAbortedError("closed with no echo")
        if digest == hashlib.sha256(blob).hexdigest():
            stats["ok"] += 1
        else:
            stats["corrupt"] += 1
    except Exception as e:  # every failure is counted, by kind
        stats["failed"] += 1
        stats["failed_starts"].append(round(started, 3))
        kind = type(e).__name__
        stats["errors"][kind] = stats["errors"].get(kind, 0) + 1


async def long_one(host, port, size, seconds, stats):
    blob = os.urandom(size)
    chunk = 32768
    delay = max(0.0, seconds / (size / chunk))
    try:
        digest = await exchange(host, port, blob, pace=(chunk, delay))
        stats["long_ok" if digest == hashlib.sha256(blob).hexdigest() else "long_corrupt"] += 1
    except Exception as e:
        stats["long_failed"] += 1
        stats["errors"]["long " + type(e).__name__] = stats["errors"].get("long " + type(e).__name__, 0) + 1


async def run_load(target, seconds, rate, longs, long_bytes):
    host, port = target.rsplit(":", 1)
    port = int(port)
    stats = {"started": 0, "ok": 0, "failed": 0, "corrupt": 0, "long_ok": 0, "long_failed": 0,
             "long_corrupt": 0, "errors": {},
             "failed_starts": []}
    tasks = [asyncio.ensure_future(long_one(host, port, long_bytes, seconds * 0.8, stats))
             for _ in range(longs)]
    begin = time.monotonic()
    while True:
        elapsed = time.monotonic() - begin
        if elapsed >= seconds:
            break
        due = int(elapsed * rate) - stats["started"]
        for _ in range(due):
            stats["started"] += 1
            tasks.append(asyncio.ensure_future(short_one(host, port, stats)))
        await asyncio.sleep(0.002)
    stats["seconds"] = round(time.monotonic() - begin, 3)
    await asyncio.gather(*tasks)
    stats["rate"] = round(stats["started"] / stats["seconds"], 1)
    print(json.dumps(stats), flush=True)


def main():
    if sys.argv[1] == "echo":
        asyncio.run(serve_echo(int(sys.argv[2])))
    elif sys.argv[1] == "load":
        target, seconds, rate, longs, long_bytes = sys.argv[2:7]
        asyncio.run(run_load(target, float(seconds), float(rate), int(longs), int(long_bytes)))
    else:
        sys.exit("usage: takeover_load.py echo PORT | load HOST:PORT SECONDS RATE LONG LONG_BYTES")


if __name__ == "__main__":
    main()
