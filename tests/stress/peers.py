#!/usr/bin/env python3
"""Peers of the stress suite, run as separate processes by tests/stress/run.py so that
the proxy under test shares no process (and no descriptor limit) with them.

    python3 peers.py ROLE [args...]

Each role prints one JSON line when it is ready ({"port": ...} for servers), then reads
one JSON command per line on stdin and answers each with one JSON line on stdout.
End of stdin ends the process (everything it holds is closed). Every role also ends by
itself after --max-seconds (default 900), so a lost parent never leaves it behind.

Roles:
  traffic-upstream SEED      the upstream of the integrity and drain checks (below)
  traffic-clients SEED PORT  the clients of those checks
  echo-upstream              echoes every byte; for the churn check
  churn-clients SEED PORT    opens and closes connections in bursts
  hold-upstream              accepts and holds connections (scale check)
  hold-clients PORT          opens and holds connections (scale check)
  stall-upstream [PORT|unix:PATH] holds connections and stops reading (stalled check; stall.py)
  stall-clients PORT SEED    fills the path, later finishes each stream (stall.py)

The traffic protocol: the client first sends a 44-byte header (magic, connection id,
half-close mode, bytes each way, pace, random seed); then both sides send their
stream in random chunk sizes with random pauses while reading the other one, and
half-close in the order the mode says:
  0  independent: each side shuts down its write side when it has sent everything;
  1  client first: the upstream sends half, waits for the client's end of stream,
     then sends the rest (so bytes flow toward a client that already half-closed);
  2  upstream first: the mirror image.
Stream content is a function of (seed, stream id, offset) (support.data_at), so each
receiver checks every byte as it arrives and both ends hash what they moved.
"""

import asyncio
import json
import math
import os
import random
import selectors
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stall  # noqa: E402
import support  # noqa: E402
from support import KiB, MiB, StreamCheck, StreamSource  # noqa: E402

HEADER = struct.Struct("!8sIIQQQI")
MAGIC = b"ZCSTRESS"
MODES = ("independent", "client-first", "upstream-first")


def up_sid(cid):
    return 2 * cid


def down_sid(cid):
    return 2 * cid + 1


def chunk_size(rng, max_chunk):
    """Log-uniform from 1 byte to max_chunk."""
    return max(1, int(math.exp(rng.uniform(0.0, math.log(max_chunk)))))


class Pacer:
    def __init__(self, rate):
        self.rate = rate
        self.t0 = time.monotonic()

    async def after(self, sent):
        if self.rate > 0:
            ahead = sent / self.rate - (time.monotonic() - self.t0)
            if ahead > 0:
                await asyncio.sleep(min(ahead, 1.0))


async def send_stream(writer, src, total, rng, max_chunk, pause_p, pause_max, pacer, stop_at=None):
    """Sends the stream `src` up to byte `stop_at` (default: total)."""
    end = total if stop_at is None else stop_at
    for _ in range(100000000):
        if src.n >= end:
            return
        k = min(chunk_size(rng, max_chunk), end - src.n)
        writer.write(src.next(k))
        await writer.drain()
        await pacer.after(src.n)
        if pause_p and rng.random() < pause_p:
            await asyncio.sleep(rng.uniform(0, pause_max))


async def recv_stream(reader, chk, rng, max_chunk, pause_p, pause_max):
    """Reads to end of stream; returns 'eof' or raises."""
    for _ in range(100000000):
        data = await reader.read(chunk_size(rng, max_chunk))
        if not data:
            return "eof"
        chk.feed(data)
        if pause_p and rng.random() < pause_p:
            await asyncio.sleep(rng.uniform(0, pause_max))
    return "loop bound"


def end_name(exc):
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, BrokenPipeError):
        return "broken pipe"
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    return "%s: %s" % (type(exc).__name__, exc)


async def run_side(reader, writer, src, total, chk, mode_wait_eof, rng, opts, pacer):
    """Both directions of one side. mode_wait_eof: send half, wait for the peer's end of
    stream, then send the rest. Returns (send_end, recv_end)."""
    peer_eof = asyncio.Event()
    ends = {"send": None, "recv": None}

    async def sender():
        try:
            if mode_wait_eof:
                await send_stream(writer, src, total, rng, opts["chunk"], opts["pause_p"],
                                  opts["pause_max"], pacer, stop_at=total // 2)
                await peer_eof.wait()
            await send_stream(writer, src, total, rng, opts["chunk"], opts["pause_p"],
                              opts["pause_max"], pacer)
            if writer.can_write_eof():
                writer.write_eof()
            await writer.drain()
            ends["send"] = "done"
        except (OSError, ConnectionError) as e:
            ends["send"] = end_name(e)

    async def receiver():
        rrng = random.Random(rng.random())
        try:
            ends["recv"] = await recv_stream(reader, chk, rrng, opts["chunk"], opts["pause_p"],
                                             opts["pause_max"])
        except (OSError, ConnectionError) as e:
            ends["recv"] = end_name(e)
        finally:
            peer_eof.set()  # also on an error: the sender must not wait forever

    await asyncio.gather(sender(), receiver())
    return ends["send"], ends["recv"]


# ---- traffic-upstream ------------------------------------------------------------------

class TrafficUpstream:
    def __init__(self, seed, opts):
        self.seed = seed
        self.opts = opts
        self.results = []

    async def handle(self, reader, writer):
        res = {"cid": None, "recv_n": 0, "recv_sha": None, "bad_at": None, "sent_n": 0,
               "sent_sha": None, "send_end": None, "recv_end": None}
        try:
            head = await asyncio.wait_for(reader.readexactly(HEADER.size), 60)
            magic, cid, mode, up_n, down_n, pace, rseed = HEADER.unpack(head)
            if magic != MAGIC:
                res["recv_end"] = "bad header %r" % head[:8]
                return
            res["cid"] = cid
            rng = random.Random(rseed ^ 0x5A5A5A5A)
            src = StreamSource(self.seed, down_sid(cid))
            chk = StreamCheck(self.seed, up_sid(cid))
            try:
                s_end, r_end = await asyncio.wait_for(
                    run_side(reader, writer, src, down_n, chk, mode == 1, rng, self.opts,
                             Pacer(pace)), self.opts["conn_timeout"])
            except asyncio.TimeoutError:
                s_end, r_end = "timeout", "timeout"
            res.update(recv_n=chk.n, recv_sha=chk.sha(), bad_at=chk.bad_at, sent_n=src.n,
                       sent_sha=src.sha(), send_end=s_end, recv_end=r_end)
        except (OSError, ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
            res["recv_end"] = "header: " + end_name(e)
        finally:
            self.results.append(res)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 5)
            except (OSError, ConnectionError, asyncio.TimeoutError):
                pass

    async def command(self, msg):
        if msg["cmd"] == "results":
            out, self.results = self.results, []
            return {"results": out}
        if msg["cmd"] == "wait_results":
            deadline = time.monotonic() + msg.get("timeout", 60)
            for _ in range(100000):
                if len(self.results) >= msg["count"] or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            out, self.results = self.results, []
            return {"results": out}
        return {"error": "unknown command %r" % msg["cmd"]}


# ---- traffic-clients -------------------------------------------------------------------

class TrafficClients:
    def __init__(self, seed, port, opts):
        self.seed = seed
        self.port = port
        self.opts = opts
        self.tasks = []
        self.results = []

    async def one(self, spec):
        cid = spec["cid"]
        res = {"cid": cid, "port": None, "sent_n": 0, "sent_sha": None, "recv_n": 0,
               "recv_sha": None, "bad_at": None, "send_end": None, "recv_end": None,
               "t_end": None}
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port, limit=256 * KiB), 30)
        except (OSError, asyncio.TimeoutError) as e:
            res["recv_end"] = "connect: " + end_name(e)
            self.results.append(res)
            return
        try:
            res["port"] = writer.get_extra_info("sockname")[1]
            rng = random.Random(spec["rseed"])
            writer.write(HEADER.pack(MAGIC, cid, spec["mode"], spec["up_n"], spec["down_n"],
                                     spec.get("pace", 0), spec["rseed"]))
            src = StreamSource(self.seed, up_sid(cid))
            chk = StreamCheck(self.seed, down_sid(cid))
            try:
                s_end, r_end = await asyncio.wait_for(
                    run_side(reader, writer, src, spec["up_n"], chk, spec["mode"] == 2, rng,
                             self.opts, Pacer(spec.get("pace", 0))),
                    spec.get("timeout", self.opts["conn_timeout"]))
            except asyncio.TimeoutError:
                s_end, r_end = "timeout", "timeout"
            res.update(sent_n=src.n, sent_sha=src.sha(), recv_n=chk.n, recv_sha=chk.sha(),
                       bad_at=chk.bad_at, send_end=s_end, recv_end=r_end, t_end=time.time())
        finally:
            self.results.append(res)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 5)
            except (OSError, ConnectionError, asyncio.TimeoutError):
                pass

    async def command(self, msg):
        if msg["cmd"] == "start":
            for spec in msg["conns"]:
                self.tasks.append(asyncio.ensure_future(self.one(spec)))
            return {"started": len(msg["conns"])}
        if msg["cmd"] == "progress":
            return {"done": len(self.results), "running": sum(1 for t in self.tasks if not t.done())}
        if msg["cmd"] == "wait":
            tasks, self.tasks = self.tasks, []
            if tasks:
                await asyncio.wait(tasks, timeout=msg.get("timeout", 300))
            for t in tasks:
                if not t.done():
                    t.cancel()
            out, self.results = self.results, []
            return {"results": out, "unfinished": sum(1 for t in tasks if not t.done())}
        return {"error": "unknown command %r" % msg["cmd"]}


# ---- echo-upstream and churn-clients ---------------------------------------------------

class EchoUpstream:
    def __init__(self):
        self.accepted = 0
        self.open = 0
        self.bytes = 0
        self.resets = 0

    async def handle(self, reader, writer):
        self.accepted += 1
        self.open += 1
        try:
            for _ in range(10000000):
                data = await asyncio.wait_for(reader.read(256 * KiB), 120)
                if not data:
                    break
                self.bytes += len(data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, ConnectionError, asyncio.TimeoutError):
            self.resets += 1
        finally:
            self.open -= 1
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 5)
            except (OSError, ConnectionError, asyncio.TimeoutError):
                pass

    async def command(self, msg):
        if msg["cmd"] == "stats":
            return {"accepted": self.accepted, "open": self.open, "bytes": self.bytes,
                    "resets": self.resets}
        return {"error": "unknown command %r" % msg["cmd"]}


CHURN_KINDS = ("half-close", "close", "rst", "connect-close", "rst-unread")


class ChurnClients:
    """Each connection: connect, send a random message, read the echo back and check it,
    then end one of several ways (CHURN_KINDS)."""

    def __init__(self, seed, port):
        self.seed = seed
        self.port = port
        self.rng = random.Random(seed)
        self.next_cid = 1

    async def one(self, cid, kind, size, stats):
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port, limit=256 * KiB), 30)
        except (OSError, asyncio.TimeoutError) as e:
            stats["connect_failed"] += 1
            stats["errors"].append("connect: " + end_name(e))
            return
        sock = writer.get_extra_info("socket")
        try:
            if kind == "connect-close":
                stats["ok"] += 1
                return
            src = StreamSource(self.seed, cid)
            chk = StreamCheck(self.seed, cid)
            writer.write(src.next(size))
            await writer.drain()
            if kind == "rst-unread":
                # Reset while the echo is (probably) still arriving.
                stats["ok"] += 1
                stats["rst"] += 1
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if kind == "half-close":
                writer.write_eof()
            for _ in range(1000000):
                if chk.n >= size:
                    break
                data = await asyncio.wait_for(reader.read(256 * KiB), 30)
                if not data:
                    break
                chk.feed(data)
            if chk.n != size or chk.bad_at is not None:
                stats["bad"] += 1
                stats["errors"].append("cid %d: echo %d of %d bytes, bad at %s"
                                       % (cid, chk.n, size, chk.bad_at))
                return
            stats["bytes"] += 2 * size
            if kind == "half-close":
                tail = await asyncio.wait_for(reader.read(1), 30)
                if tail:
                    stats["bad"] += 1
                    stats["errors"].append("cid %d: bytes after the echo" % cid)
                    return
            if kind == "rst":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                stats["rst"] += 1
            stats["ok"] += 1
        except (OSError, ConnectionError, asyncio.TimeoutError) as e:
            stats["failed"] += 1
            if len(stats["errors"]) < 20:
                stats["errors"].append("cid %d %s: %s" % (cid, kind, end_name(e)))
        finally:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 5)
            except (OSError, ConnectionError, asyncio.TimeoutError):
                pass

    async def burst(self, n, conc, max_size):
        stats = {"ok": 0, "bad": 0, "failed": 0, "connect_failed": 0, "rst": 0, "bytes": 0,
                 "errors": []}
        sem = asyncio.Semaphore(conc)

        async def guarded(cid, kind, size):
            async with sem:
                await self.one(cid, kind, size, stats)
        jobs = []
        for _ in range(n):
            cid = self.next_cid
            self.next_cid += 1
            kind = self.rng.choice(CHURN_KINDS)
            r = self.rng.random()
            size = (self.rng.randint(1, 2048) if r < 0.6 else
                    self.rng.randint(2048, 64 * KiB) if r < 0.95 else
                    self.rng.randint(64 * KiB, max_size))
            jobs.append(guarded(cid, kind, size))
        t0 = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*jobs), 300)
        stats["secs"] = time.monotonic() - t0
        stats["errors"] = stats["errors"][:20]
        return stats

    async def command(self, msg):
        if msg["cmd"] == "burst":
            return await self.burst(msg["n"], msg["conc"], msg.get("max_size", 1 * MiB))
        return {"error": "unknown command %r" % msg["cmd"]}


# ---- hold-upstream and hold-clients (scale) -------------------------------------------

TOKEN = struct.Struct("!QQ")


class HoldUpstream:
    """Accepts (in a thread, blocking) and holds every connection; never registers them
    with epoll while they are idle, so the kernel's epoll items counted during the scale
    check are the proxy's."""

    def __init__(self):
        self.sock = support.listener(backlog=4096)
        self.sock.settimeout(0.2)
        self.conns = []
        self.lock = threading.Lock()
        self.stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        for _ in range(100000000):
            if self.stop:
                return
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                time.sleep(0.05)  # EMFILE or the socket closed
                continue
            with self.lock:
                self.conns.append(c)

    def echo(self, count, timeout):
        """Echoes what arrives on every held connection until `count` tokens went back."""
        with self.lock:
            conns = list(self.conns)
        sel = selectors.EpollSelector()
        for c in conns:
            c.setblocking(False)
            sel.register(c, selectors.EVENT_READ, bytearray())
        echoed = 0
        deadline = time.monotonic() + timeout
        try:
            for _ in range(100000000):
                if echoed >= count or time.monotonic() > deadline:
                    break
                for key, _ in sel.select(0.2):
                    try:
                        data = key.fileobj.recv(4096)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        sel.unregister(key.fileobj)
                        continue
                    if not data:
                        sel.unregister(key.fileobj)
                        continue
                    buf = key.data
                    buf += data
                    while len(buf) >= TOKEN.size:
                        key.fileobj.setblocking(True)
                        key.fileobj.settimeout(10)
                        key.fileobj.sendall(bytes(buf[:TOKEN.size]))
                        key.fileobj.setblocking(False)
                        del buf[:TOKEN.size]
                        echoed += 1
        finally:
            sel.close()
        return echoed

    def command(self, msg):
        if msg["cmd"] == "count":
            with self.lock:
                return {"accepted": len(self.conns)}
        if msg["cmd"] == "echo":
            return {"echoed": self.echo(msg["count"], msg.get("timeout", 60))}
        if msg["cmd"] == "close":
            with self.lock:
                conns, self.conns = self.conns, []
            for c in conns:
                c.close()
            return {"closed": len(conns)}
        return {"error": "unknown command %r" % msg["cmd"]}


class HoldClients:
    def __init__(self, port):
        self.port = port
        self.conns = []

    def connect(self, n):
        failed = 0
        errors = []
        t0 = time.monotonic()
        for _ in range(n):
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                self.conns.append(s)
            except OSError as e:
                failed += 1
                if len(errors) < 5:
                    errors.append(str(e))
        return {"open": len(self.conns), "failed": failed, "errors": errors,
                "secs": time.monotonic() - t0}

    def ping(self, timeout):
        """Sends a 16-byte token on every connection and checks each echo."""
        sel = selectors.EpollSelector()
        want = {}
        t0 = time.monotonic()
        for i, c in enumerate(self.conns):
            tok = TOKEN.pack(i, random.getrandbits(64))
            c.settimeout(10)
            c.sendall(tok)
            c.setblocking(False)
            want[c] = tok
            sel.register(c, selectors.EVENT_READ, bytearray())
        ok = bad = 0
        deadline = time.monotonic() + timeout
        try:
            for _ in range(100000000):
                if ok + bad >= len(self.conns) or time.monotonic() > deadline:
                    break
                for key, _ in sel.select(0.2):
                    c = key.fileobj
                    try:
                        data = c.recv(64)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        bad += 1
                        sel.unregister(c)
                        continue
                    key.data.extend(data)
                    if len(key.data) >= TOKEN.size:
                        if bytes(key.data) == want[c]:
                            ok += 1
                        else:
                            bad += 1
                        sel.unregister(c)
        finally:
            sel.close()
            for c in self.conns:
                c.setblocking(True)
        return {"ok": ok, "bad": bad, "missing": len(self.conns) - ok - bad,
                "secs": time.monotonic() - t0}

    def command(self, msg):
        if msg["cmd"] == "connect":
            return self.connect(msg["n"])
        if msg["cmd"] == "ping":
            return self.ping(msg.get("timeout", 60))
        if msg["cmd"] == "close":
            n = len(self.conns)
            for c in self.conns:
                c.close()
            self.conns = []
            return {"closed": n}
        return {"error": "unknown command %r" % msg["cmd"]}


# ---- main -------------------------------------------------------------------------------

def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def serve_async(handler_obj, server_cb=None):
    """Runs an asyncio role: an optional server, commands from stdin until it ends."""
    loop = asyncio.get_running_loop()
    server = None
    hello = {}
    if server_cb is not None:
        sock = support.listener(backlog=4096)
        server = await asyncio.start_server(server_cb, sock=sock, limit=256 * KiB)
        hello["port"] = sock.getsockname()[1]
    hello["pid"] = os.getpid()
    reply(hello)
    reader = asyncio.StreamReader(limit=16 * MiB)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    for _ in range(1000000):
        line = await reader.readline()
        if not line:
            break
        msg = json.loads(line)
        try:
            reply(await handler_obj.command(msg))
        except Exception as e:  # answered, so the parent reports it
            reply({"error": "%s: %s" % (type(e).__name__, e)})
    if server is not None:
        server.close()


def serve_sync(handler_obj, hello):
    hello["pid"] = os.getpid()
    reply(hello)
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            reply(handler_obj.command(msg))
        except Exception as e:
            reply({"error": "%s: %s" % (type(e).__name__, e)})


def main():
    support.raise_nofile()
    args = sys.argv[1:]
    max_seconds = 900
    if "--max-seconds" in args:
        i = args.index("--max-seconds")
        max_seconds = float(args[i + 1])
        del args[i:i + 2]
    # A lost parent never leaves a peer behind.
    threading.Timer(max_seconds, lambda: os._exit(3)).start()
    role, rest = args[0], args[1:]
    opts = {"chunk": 256 * KiB, "pause_p": 0.05, "pause_max": 0.02, "conn_timeout": 240}
    for a in list(rest):
        if a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            opts[k.replace("-", "_")] = float(v) if "." in v else int(v)
            rest.remove(a)
    if role == "traffic-upstream":
        u = TrafficUpstream(int(rest[0]), opts)
        asyncio.run(serve_async(u, u.handle))
    elif role == "traffic-clients":
        c = TrafficClients(int(rest[0]), int(rest[1]), opts)
        asyncio.run(serve_async(c))
    elif role == "echo-upstream":
        e = EchoUpstream()
        asyncio.run(serve_async(e, e.handle))
    elif role == "churn-clients":
        c = ChurnClients(int(rest[0]), int(rest[1]))
        asyncio.run(serve_async(c))
    elif role == "hold-upstream":
        h = HoldUpstream()
        serve_sync(h, {"port": h.sock.getsockname()[1]})
    elif role == "hold-clients":
        serve_sync(HoldClients(int(rest[0])), {})
    elif role == "stall-upstream":
        u = stall.StallUpstream(rest[0] if rest else "0")
        name = u.sock.getsockname()
        serve_sync(u, {"port": name[1]} if isinstance(name, tuple) else {"path": name})
    elif role == "stall-clients":
        serve_sync(stall.StallClients(int(rest[0]), int(rest[1])), {})
    else:
        reply({"error": "unknown role %r" % role})
        sys.exit(2)
    os._exit(0)  # the watchdog timer thread must not keep the process alive


if __name__ == "__main__":
    main()
