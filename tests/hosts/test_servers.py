"""The multi-host run's database servers: their tools run inside their own host's namespace."""

from __future__ import annotations

from hosts.layout import SHARD_HOSTS
from hosts.servers import HostPostgres


def test_a_host_servers_tools_run_in_its_namespace_as_the_postgres_user() -> None:
    # Run outside the namespace, pg_ctl cannot bind the host's address and the run fails at start.
    host = SHARD_HOSTS[1]
    server = HostPostgres.on(host, "wallet_shard_01")
    argv = server.as_postgres(["pg_ctl", "status"])
    assert argv[:4] == ["ip", "netns", "exec", host.namespace]
    assert argv[4:] == ["runuser", "-u", "postgres", "--", "pg_ctl", "status"]
