"""A TCP relay that delays every chunk by a set time in each direction, keeping byte order.

This kernel has no netem, so a slow link is made in user space: the relay runs on the slow
shard's host, listens on a second port of its address and forwards to the PostgreSQL
server there. Each direction is a pipe with a fixed delay: a chunk read at time t is
written at t + delay, after every chunk read before it, and reading goes on meanwhile (a
link's latency, not a cap on its throughput). The delay (milliseconds each way) is read
from a file, so a running relay can be slowed down or sped up:

    python -m hosts.relay --listen 10.77.0.13:6432 --target 10.77.0.13:5432 --delay-file var/hosts/relay-delay
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import time
from pathlib import Path

READ_SIZE = 65536
RELOAD_SECONDS = 0.2
# As the servers': a side that vanishes is noticed, and the other side's connection closed with it.
KEEPALIVE = {"TCP_KEEPIDLE": 5, "TCP_KEEPINTVL": 2, "TCP_KEEPCNT": 3, "TCP_USER_TIMEOUT": 5000}


def keep_alive(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in KEEPALIVE.items():
        sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class Delay:
    """The current delay in seconds, re-read from its file when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds = 0.0
        self._mtime = 0.0

    def reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
            if mtime != self._mtime:
                self.seconds = max(0.0, float(self.path.read_text().strip() or 0)) / 1000
                self._mtime = mtime
                print(f"relay: delay {self.seconds * 1000:g} ms each way", flush=True)
        except (OSError, ValueError):
            pass  # no file (yet) or a partial write: keep the current delay

    async def watch(self) -> None:
        while True:
            self.reload()
            await asyncio.sleep(RELOAD_SECONDS)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: Delay) -> None:
    """Copy one direction: a reading task queues (due time, chunk), this one writes each when due."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        while True:
            chunk = await reader.read(READ_SIZE)
            await queue.put((time.monotonic() + delay.seconds, chunk))
            if not chunk:
                return

    reading = asyncio.create_task(read())
    try:
        while True:
            due, chunk = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not chunk:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await reading


async def relay(
    client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter, target: tuple[str, int], delay: Delay
) -> None:
    try:
        server_reader, server_writer = await asyncio.open_connection(*target)
    except OSError:
        client_writer.close()
        return
    keep_alive(client_writer)
    keep_alive(server_writer)
    directions = [
        asyncio.create_task(pipe(client_reader, server_writer, delay)),
        asyncio.create_task(pipe(server_reader, client_writer, delay)),
    ]
    try:
        # Done when either side is finished or broken: a half-closed PostgreSQL connection is over.
        _done, pending = await asyncio.wait(directions, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*directions, return_exceptions=True)
    finally:
        for writer in (client_writer, server_writer):
            writer.close()


def address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


async def serve(listen: tuple[str, int], target: tuple[str, int], delay: Delay) -> None:
    delay.reload()
    server = await asyncio.start_server(lambda r, w: relay(r, w, target, delay), *listen, reuse_address=True)
    print(f"relay: {listen[0]}:{listen[1]} -> {target[0]}:{target[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(delay.watch())
    async with server:
        await stop.wait()
    watcher.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m hosts.relay", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=address, required=True, help="address:port to listen on")
    parser.add_argument("--target", type=address, required=True, help="address:port to forward to")
    parser.add_argument("--delay-file", type=Path, required=True, help="milliseconds each way, re-read on change")
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.target, Delay(args.delay_file)))


if __name__ == "__main__":
    main()
