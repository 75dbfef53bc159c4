from __future__ import annotations

from typing import Any

import psycopg
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.operators.models import ActionKind
from apps.operators.services import recorded_command
from apps.sharding import moves
from apps.sharding.lease import MoveBusy, evict, lease_holder
from apps.sharding.mover import MoveFailed, Mover, plan_move
from apps.sharding.moves import ACTIVE, MoveConflict, MoveLost


def status_lines(limit: int = 10) -> list[str]:
    lines = []
    for view in moves.move_overview(limit):
        move, extra = view.move, []
        if view.lag_bytes is not None:
            extra.append(f"lag {view.lag_bytes} bytes")
        if view.pause_ms is not None:
            extra.append(f"writes paused {view.pause_ms} ms")
        if "rows_copied" in move.detail:
            extra.append(f"{move.detail['rows_copied']} rows copied")
        if move.error:
            extra.append(f"error: {move.error}")
        lines.append(
            f"move {move.id}: buckets {move.buckets} {move.source} -> {move.target}  {move.state}/{move.phase}"
            f"  epoch {move.epoch or '-'}  " + ", ".join(extra)
        )
        if move.state == ACTIVE:
            lines.append("  " + holder_line(move))
    return lines or ["no moves yet"]


def holder_line(move: moves.Move) -> str:
    """Whether a process runs the move, whether it is alive, and what it waits on."""
    holder = lease_holder(move.id)
    if holder is None:
        switched = " (it has switched: resume only)" if move.phase == "cleaning" else ""
        return (
            "no process runs it (its mover ended or died): `move_buckets --resume` continues it,"
            f" `move_buckets --abort` undoes it{switched}"
        )
    waiting = move.detail.get("waiting_on") or "its current step"
    line = f"run by {holder.describe()}, waiting on {waiting} (journal updated {move.updated_at:%H:%M:%S})"
    if holder.process_state == "stopped":
        line += "; the process is STOPPED: `kill -CONT` it, or end it (kill) and resume"
    return line


class Command(BaseCommand):
    help = (
        "Move buckets FIRST..LAST to shard SHARD online: copy, catch up, verify, switch, clean up."
        " Run it again to resume a move that was interrupted; --abort undoes one before its switch."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("first", type=int, nargs="?")
        parser.add_argument("last", type=int, nargs="?")
        parser.add_argument("--to", dest="target", help="the shard alias that receives the buckets")
        parser.add_argument("--status", action="store_true", help="show recent moves with their phase and lag")
        parser.add_argument("--resume", action="store_true", help="run the active move to its end")
        parser.add_argument("--abort", action="store_true", help="undo the active move (before its switch)")
        parser.add_argument(
            "--evict", action="store_true",
            help="end the lease of the process running the active move (for a mover on a host you cannot reach)",
        )  # fmt: skip
        parser.add_argument(
            "--keep-source", action="store_true",
            help="end a switched move whose check failed without deleting the source's (fenced) copy",
        )  # fmt: skip
        parser.add_argument("--stop-after", choices=moves.PHASES[:-1], help="stop once this phase is done")
        parser.add_argument("--reason", default="", help="why (kept in the operators' trail)")
        parser.add_argument("--switch-timeout", type=float, default=5.0, help="longest write pause, seconds")
        parser.add_argument("--cleanup-delay", type=float, default=3.0, help="seconds between switch and clean-up")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["status"]:
            for line in status_lines():
                self.stdout.write(line)
            return
        mode = next((m for m in ("evict", "abort", "resume", "keep_source") if options[m]), None)
        subject = f"--{mode.replace('_', '-')}" if mode else f"buckets {options['first']}..{options['last']}"
        # Every change an operator asks for is in the operators' trail, with its outcome.
        with recorded_command(
            ActionKind.MOVE_BUCKETS, shard=options["target"] or "", subject=subject, reason=options["reason"]
        ) as record:
            if mode == "evict":
                self._evict()
            else:
                self._move(options)
            record.detail = "; ".join(status_lines(1)) or "done"

    def _move(self, options: dict[str, Any]) -> None:
        try:
            if options["abort"] or options["resume"] or options["keep_source"]:
                move = moves.active_move()
                if move is None:
                    raise CommandError("no move is active")
            else:
                if options["first"] is None or options["last"] is None or not options["target"]:
                    raise CommandError("usage: move_buckets FIRST LAST --to SHARD (or --status, --resume, --abort)")
                move = plan_move(options["first"], options["last"], options["target"])
            mover = Mover(
                move,
                report=self.stdout.write,
                switch_timeout=options["switch_timeout"],
                cleanup_delay=options["cleanup_delay"],
            )
            if options["keep_source"]:
                move = mover.finish_keeping_source()
                self.stdout.write(f"move {move.id} ended; {move.source} keeps its fenced copy of {move.buckets}")
                return
            if options["abort"]:
                move = mover.abort()
                self.stdout.write(f"move {move.id} aborted: the range stays on {move.source}")
                return
            try:
                mover.run(stop_after=options["stop_after"])
            except MoveFailed as exc:
                raise CommandError(f"move {move.id} stopped in {mover.move.phase}: {exc}") from exc
        except (MoveConflict, MoveBusy) as exc:
            raise CommandError(str(exc)) from exc
        except MoveLost as exc:
            raise CommandError(f"this process no longer runs the move: {exc}") from exc
        except psycopg.OperationalError as exc:
            # A shard or the control database down mid-step: every step is guarded and
            # idempotent, so the same command, run again once it is back, goes on from here.
            why = str(exc).splitlines()[0]
            raise CommandError(
                f"a database could not be reached ({why}): run the same command again once it is back"
            ) from exc
        for line in status_lines(1):
            self.stdout.write(line)

    def _evict(self) -> None:
        move = moves.active_move()
        if move is None:
            raise CommandError("no move is active")
        holder = evict(move.id)
        if holder is None:
            self.stdout.write(f"move {move.id}: no process held it")
            return
        self.stdout.write(
            f"move {move.id}: the lease of {holder.describe()} has ended; that process can change nothing any more"
            " and exits when it next looks. `move_buckets --resume` or `--abort` now takes the move."
        )
