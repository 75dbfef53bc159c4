"""`make test-hosts`: the service as separate hosts in network namespaces, under real network faults.

python -m hosts [--scenarios a,b,c] [--keep] [--down]

Builds the hosts (root only), runs the chosen scenarios in order on one stack, prints a
report (also var/hosts/report.json) and tears everything down, also on failure or Ctrl-C.
Exit status 0 when every scenario passed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any, NoReturn

from bench.stack import ROOT
from hosts import report
from hosts.layout import LOGS, relative
from hosts.scenarios import Options, Outcome, Runner
from hosts.stack import Stack, StackError, check_tools, hold_run_lock, remove_leftovers

SCENARIOS = ("a", "b", "c", "d", "e", "f")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hosts", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenarios",
        default="a,b,c,d,f",
        help="which to run, in this order (a,b,c,d,f; e on demand, see docs/HOSTS.md)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="leave the hosts running at the end (`--down` removes them)"
    )
    parser.add_argument("--down", action="store_true", help="only remove the hosts of an earlier run, then exit")
    parser.add_argument("--users", type=int, default=Options.users, help="the client's concurrent users")
    parser.add_argument(
        "--no-server-keepalives",
        action="store_true",
        help="the servers without the settings that drop vanished clients (shows why they are needed)",
    )
    parser.add_argument("--seconds", type=float, default=Options.seconds_a, help="scenario (a)'s load")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    return args


def _interrupted(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def run(args: argparse.Namespace, stack: Stack) -> list[Outcome]:
    started = time.monotonic()
    print("hosts: building the network and starting the servers", flush=True)
    stack.up()
    runner = Runner(stack, Options(users=args.users, seconds_a=args.seconds))
    runner.setup()
    print(f"hosts: up in {time.monotonic() - started:.0f} s", flush=True)
    outcomes = []
    for name in args.scenarios:
        print(f"hosts: scenario ({name})", flush=True)
        # The audit store is reconciled with the shards after (a), and after the last scenario.
        reconcile = name == "a" or name == args.scenarios[-1]
        outcome = getattr(runner, f"scenario_{name}")(reconcile=reconcile)
        outcomes.append(outcome)
        for line in report.lines(outcome):
            print(line, flush=True)
    return outcomes


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit(
            "make test-hosts must run as root: it creates network namespaces (ip netns), veth pairs and a"
            " bridge, and runs PostgreSQL as the postgres user"
        )
    os.chdir(ROOT)
    check_tools()
    lock = hold_run_lock()  # noqa: F841 - held for the whole run
    for line in remove_leftovers():
        print(f"hosts: leftover of an earlier run: {line}", flush=True)
    if args.down:
        return 0
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    started = time.monotonic()
    stack = Stack(server_keepalives=not args.no_server_keepalives)
    outcomes: list[Outcome] = []
    error = None
    try:
        outcomes = run(args, stack)
    except KeyboardInterrupt:
        error = "interrupted"
    except (StackError, RuntimeError) as exc:
        error = str(exc)
    finally:
        # A second Ctrl-C (or a SIGTERM) must not cut the teardown short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if args.keep:
            print(f"hosts: left running (--keep); `python -m hosts --down` removes them; logs in {relative(LOGS)}")
        else:
            for line in stack.down():
                print(f"hosts: teardown: {line}", flush=True)
    elapsed = round(time.monotonic() - started, 1)
    document = {
        "scenarios": {o.name: {"ok": o.ok, "failures": o.failures, **o.figures} for o in outcomes},
        "error": error,
        "elapsed_seconds": elapsed,
    }
    where = report.write(document)
    passed = error is None and len(outcomes) == len(args.scenarios) and all(o.ok for o in outcomes)
    print(f"\nhosts: {'PASS' if passed else 'FAIL'} in {elapsed:.0f} s; report {where}; logs in {relative(LOGS)}")
    if error:
        print(f"hosts: {error}", file=sys.stderr)
    for outcome in outcomes:
        for line in report.lines(outcome):
            print(line)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
