"""The hosts' network: one namespace per host, a veth pair from each to a bridge in a namespace of its own.

The machine's own (root) network namespace is never changed: no address, route or device
is added there, so nothing on the machine can reach the hosts, nor they it. A host's `lo`
is up (a process may use its own host's loopback); another host's loopback is out of reach
by construction.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

from hosts.layout import BRIDGE, BRIDGE_NS, HOSTS, PREFIX, PREFIX_LEN, Host


class NetworkError(RuntimeError):
    """An `ip` command failed; the message has its output."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)  # noqa: S603, S607
    if check and result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def on(host: Host, argv: list[str]) -> list[str]:
    """`argv` run inside the host's namespace (`ip netns exec` execs it: same pid, no extra process)."""
    return ["ip", "netns", "exec", host.namespace, *argv]


def namespaces() -> list[str]:
    """Our namespaces that exist now (a crashed run's included)."""
    names = ip("netns", "list").stdout.split("\n")
    return sorted(n.split()[0] for n in names if n.startswith(PREFIX))


def pids_in(namespace: str) -> list[int]:
    out = ip("netns", "pids", namespace, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def kill_processes(namespace: str, grace: float = 10.0) -> int:
    """SIGTERM every process in the namespace, then SIGKILL what is left after `grace` seconds."""
    pids = pids_in(namespace)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids_in(namespace) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids_in(namespace):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids_in(namespace) and time.monotonic() < deadline:
        time.sleep(0.1)
    return len(pids)


def remove_all(grace: float = 10.0) -> list[str]:
    """Kill whatever runs in our namespaces, then delete them (their veths and the bridge go with them).

    Used both at the end of a run and at the start of the next one, for a run that crashed
    or was SIGKILLed: processes are found by the namespace they run in, never by name.
    """
    said = []
    present = namespaces()
    for namespace in present:
        killed = kill_processes(namespace, grace)
        if killed:
            said.append(f"{namespace}: {killed} process(es) stopped")
    for namespace in present:
        ip("netns", "del", namespace, check=False)
    if present:
        said.append(f"namespaces deleted: {', '.join(present)}")
    return said


def create() -> None:
    """The bridge's namespace and every host's, each host linked to the bridge with its address."""
    ip("netns", "add", BRIDGE_NS)
    ip("-n", BRIDGE_NS, "link", "set", "lo", "up")
    ip("-n", BRIDGE_NS, "link", "add", BRIDGE, "type", "bridge")
    ip("-n", BRIDGE_NS, "link", "set", BRIDGE, "up")
    for host in HOSTS:
        ns = host.namespace
        ip("netns", "add", ns)
        ip("-n", ns, "link", "set", "lo", "up")
        ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", host.veth, "netns", BRIDGE_NS)
        ip("-n", BRIDGE_NS, "link", "set", host.veth, "master", BRIDGE)
        ip("-n", BRIDGE_NS, "link", "set", host.veth, "up")
        ip("-n", ns, "addr", "add", f"{host.address}/{PREFIX_LEN}", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")


def set_link(host: Host, up: bool) -> None:
    """The host's port on the bridge, as a switch port failing: the host keeps its address and
    routes, its packets and those sent to it are dropped, and TCP finds out by itself."""
    ip("-n", BRIDGE_NS, "link", "set", host.veth, "up" if up else "down")


def link_is_up(host: Host) -> bool:
    return "state UP" in ip("-n", BRIDGE_NS, "link", "show", host.veth).stdout
