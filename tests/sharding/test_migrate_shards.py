"""`manage.py migrate_shards` (the image's `migrate` role) tries every shard and fails if any failed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.conf import settings

from tests.factories import ALL_DATABASES, free_port

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def test_an_unreachable_shard_fails_the_job_after_the_others_are_migrated(devstack, tmp_path: Path) -> None:
    shard_map = yaml.safe_load(Path(settings.SHARDS_FILE).read_text())
    # A declared shard with no bucket yet (as before `shard_add`), on a port nothing answers;
    # sorted first, so the shards after it are seen to be tried all the same.
    shard_map["shards"].insert(0, {"alias": "shard_000", "host": "127.0.0.1", "port": free_port(), "name": "none"})
    map_file = tmp_path / "shards.yaml"
    map_file.write_text(yaml.safe_dump(shard_map))
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "wallet_project.settings_test",
        "SHARDWALLET_SHARDS_FILE": str(map_file),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate_shards"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1
    assert "shard_000: migration FAILED: OperationalError" in result.stderr
    assert "1 shard(s) not migrated: shard_000" in result.stderr
    assert "migrating shard_00\n" in result.stdout
    assert "migrating shard_01\n" in result.stdout

    result = subprocess.run(
        [sys.executable, "manage.py", "migrate_shards"],
        env={**env, "SHARDWALLET_SHARDS_FILE": str(settings.SHARDS_FILE)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
