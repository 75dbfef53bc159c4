"""The slow link's relay: bytes arrive in order, each direction delayed by the file's milliseconds."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from hosts.relay import Delay, relay


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _round_trips(delay_file: Path, chunks: list[bytes]) -> tuple[bytes, float]:
    echo, echo_port = await _echo_server()
    delay = Delay(delay_file)
    delay.reload()
    front = await asyncio.start_server(lambda r, w: relay(r, w, ("127.0.0.1", echo_port), delay), "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", front.sockets[0].getsockname()[1])
    received = b""
    started = time.perf_counter()
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
        received += await reader.readexactly(len(chunk))
    elapsed = time.perf_counter() - started
    writer.close()
    front.close()
    echo.close()
    return received, elapsed


def test_relay_keeps_byte_order_and_delays_each_direction(tmp_path: Path) -> None:
    delay_file = tmp_path / "delay"
    delay_file.write_text("20\n")
    chunks = [bytes([i]) * (1000 + i) for i in range(5)]
    received, elapsed = asyncio.run(_round_trips(delay_file, chunks))
    assert received == b"".join(chunks)
    # Five round trips, each through the relay twice (there and back): at least 5 x 40 ms.
    assert elapsed >= 0.2


def test_relay_without_delay_adds_no_wait(tmp_path: Path) -> None:
    delay_file = tmp_path / "delay"
    delay_file.write_text("0\n")
    chunks = [b"x" * 100 for _ in range(5)]
    received, elapsed = asyncio.run(_round_trips(delay_file, chunks))
    assert received == b"".join(chunks)
    assert elapsed < 0.2


def test_delay_is_read_again_when_the_file_changes(tmp_path: Path) -> None:
    delay_file = tmp_path / "delay"
    delay_file.write_text("0\n")
    delay = Delay(delay_file)
    delay.reload()
    assert delay.seconds == 0
    replacement = tmp_path / "delay.tmp"
    replacement.write_text("20\n")
    replacement.replace(delay_file)
    delay.reload()
    assert delay.seconds == 0.02


def test_a_missing_or_garbled_file_keeps_the_current_delay(tmp_path: Path) -> None:
    delay = Delay(tmp_path / "absent")
    delay.reload()
    assert delay.seconds == 0
    (tmp_path / "absent").write_text("twenty")
    delay.reload()
    assert delay.seconds == 0
