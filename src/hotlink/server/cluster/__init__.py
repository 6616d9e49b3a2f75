"""Cluster mode: relay replicas that share presence, sessions and ACLs through Redis.

Each session has a home, the replica its Open arrived on; the home's router decides for
it exactly as one process does, and the other replicas forward their connections'
messages for it there. Replicas talk over one Redis Stream each (their inbox), in order
per link. The pure parts (records, link order, membership, homes) have no I/O;
``link`` and ``node`` move the bytes.
"""
