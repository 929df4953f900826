"""``livetx keys revoke`` and ``livetx devices revoke`` tell every node at once, over Redis pub/sub.

The command line has no reactor, so it publishes with redis-py's blocking
client, the one place that library is used; the servers listen through
:mod:`livetx.cluster.redis`. The message is the key's id (never the key), or the board's Device-Id.
"""

from __future__ import annotations

#: The channel (after the cluster's prefix) a revoked key's id is published on.
CHANNEL = "revoked"
#: The channel a revoked board's Device-Id is published on.
DEVICES = "revoked-devices"


def announce(url: str, key_id: str, prefix: str = "livetx:", timeout: float = 2.0, channel: str = CHANNEL) -> int:
    """Publish that ``key_id`` (on ``channel``: what it names) is revoked; returns how many nodes heard it."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return int(client.publish(prefix + channel, key_id))
    finally:
        client.close()
