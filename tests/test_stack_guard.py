"""The suite's refusal to touch a stack that is not its own, checked against real servers."""

from pathlib import Path

from django.conf import settings

from apps.sharding.shardmap import load_shard_map
from tests.stack_guard import stack_refusals

ROOT = Path(settings.BASE_DIR)


def refusals(shards_file: Path, stack_dir: Path) -> list[str]:
    return stack_refusals(load_shard_map(shards_file), shards_file, stack_dir, settings.REDIS_URL, ROOT)


def test_the_running_test_stack_is_accepted(devstack) -> None:
    assert refusals(Path(settings.SHARDS_FILE), Path(settings.DEVSTACK_DIR)) == []


def test_the_run_stacks_map_is_refused() -> None:
    problems = refusals(ROOT / "shards.yaml", ROOT / "var" / "dev")
    assert any("does not declare `throwaway: true`" in p for p in problems)
    assert any("belongs to `make run`" in p for p in problems)


def test_servers_of_another_stack_directory_are_refused(devstack, tmp_path: Path) -> None:
    # The same ports, answered by this session's servers, seen from a stack directory that does not own them.
    problems = refusals(Path(settings.SHARDS_FILE), tmp_path)
    assert any("shard_00: port" in p and "not " + str(tmp_path / "pg" / "shard_00") in p for p in problems)
    assert any("was not started by this stack" in p for p in problems)
