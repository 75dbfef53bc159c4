"""Where everything lives: the hosts' names and addresses, ports, and files under var/hosts/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.stack import ROOT

PREFIX = "swh-"  # every namespace of ours; leftovers of a crashed run are found by it
BRIDGE_NS = f"{PREFIX}net"
BRIDGE = "br0"
SUBNET = "10.77.0.0/24"
PREFIX_LEN = 24

POSTGRES_PORT = 5432
RELAY_PORT = 6432  # the slow shard's relay, on the same host as its server
REDIS_PORT = 6379
API_PORT = 8000
AUDIT_HTTP_PORT = 8123  # the CDC's embedded endpoint, on the app host's own 127.0.0.1
OPS_PORT = 8001  # the admin and /metrics: the API's second listener, production's default 127.0.0.1:8001

SHARDS = 3
PARTITIONED_SHARD = "shard_01"  # scenario (b)
SLOW_SHARD = "shard_02"  # scenario (c): the app reaches it through the relay for the whole run
# A replicated shard: its host runs the first member of a Patroni cluster, two more hosts run
# the others, and each of the three runs a member of the etcd cluster every Patroni cluster
# keeps its leader key in. Scenario (d) kills its primary. The control database is a Patroni
# cluster of three too, on its host and two more.
CLUSTER_SHARD = "shard_00"
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
PATRONI_PORT = 8008  # Patroni's REST API: the members' health checks of each other, and ours


@dataclass(frozen=True)
class Host:
    name: str  # control, shard_00, ..., redis, app, client
    address: str

    @property
    def namespace(self) -> str:
        return PREFIX + self.name.replace("_", "-")

    @property
    def veth(self) -> str:
        """The bridge-side end of the host's link (the host's own end is `eth0`)."""
        return "v-" + self.name.replace("_", "-")


CONTROL = Host("control", "10.77.0.10")
SHARD_HOSTS = [Host(f"shard_{i:02d}", f"10.77.0.{11 + i}") for i in range(SHARDS)]
STANDBY_HOSTS = [Host(f"{CLUSTER_SHARD}_{suffix}", f"10.77.0.{51 + i}") for i, suffix in enumerate("bc")]
CONTROL_STANDBY_HOSTS = [Host(f"control_{suffix}", f"10.77.0.{61 + i}") for i, suffix in enumerate("bc")]
APP = Host("app", "10.77.0.20")
REDIS = Host("redis", "10.77.0.30")
REDIS_B = Host("redis_b", "10.77.0.31")
CLIENT = Host("client", "10.77.0.40")
HOSTS = [CONTROL, *CONTROL_STANDBY_HOSTS, *SHARD_HOSTS, *STANDBY_HOSTS, APP, REDIS, REDIS_B, CLIENT]
# Redis Sentinel: the broker's master on `redis` and its replica on `redis_b`; three sentinels,
# on both and on the app host, so a majority (2) survives the loss of any one host. The app
# asks the sentinels which server is the master (SHARDWALLET_REDIS_SENTINELS). Scenario (f)
# cuts the master's host off.
REDIS_HOSTS = [REDIS, REDIS_B]
SENTINEL_HOSTS = [REDIS, REDIS_B, APP]
SENTINEL_PORT = 26379
REDIS_MASTER_NAME = "shardwallet"
DATABASE_HOSTS = [CONTROL, *CONTROL_STANDBY_HOSTS, *SHARD_HOSTS, *STANDBY_HOSTS]


def host(name: str) -> Host:
    return next(h for h in HOSTS if h.name == name)


MEMBER_HOSTS = [
    host(CLUSTER_SHARD),
    *STANDBY_HOSTS,
]  # the replicated shard's members (and etcd's), the first bootstraps
CONTROL_MEMBER_HOSTS = [CONTROL, *CONTROL_STANDBY_HOSTS]
ETCD_HOSTS = MEMBER_HOSTS


API_URL = f"http://{APP.address}:{API_PORT}"

DIR = ROOT / "var" / "hosts"
PG_DIR = DIR / "pg"
APP_DIR = DIR / "app"  # the app host's SHARDWALLET_DEVSTACK_DIR: audit store, metrics, beat schedule
LOGS = DIR / "logs"
SECRETS = DIR / "secrets"
ETCD_DIR = DIR / "etcd"
PATRONI_DIR = DIR / "patroni"  # each member's configuration (it holds passwords: the postgres user's, 0600)
RESULTS = DIR / "results"  # the client's and the checks' JSON, per scenario
SHARDS_FILE = DIR / "shards.yaml"
RELAY_DELAY_FILE = DIR / "relay-delay"  # milliseconds each way, read by the relay while it runs
REPORT = DIR / "report.json"


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
