"""`make test-hosts`: the service as separate hosts in Linux network namespaces, under real network faults.

Each shard server, the control database, Redis, the application (API, saga workers, beat,
CDC) and a load-generating client get a network namespace of their own, joined by veth
pairs to a bridge in yet another namespace; nothing reaches another host over loopback or a
unix socket. Scenarios: a plain workload (a), a shard's link down for a while (b), and a
slow link to a shard through a delaying relay (c). See docs/HOSTS.md.
"""
