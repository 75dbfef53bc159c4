"""`make chaos`: the service under a seeded random schedule of crashes, pauses and lost messages.

Clients move money through the real HTTP API while processes are killed, shards crash or
stall and the broker is flushed; afterwards every answer a client got is checked against
the shards (Jepsen's bank test): nothing lost, created or moved twice, every accepted
transfer terminal, every key one transfer.
"""
