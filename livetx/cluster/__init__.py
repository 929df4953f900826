"""Several processes and machines serving as one.

``[cluster] redis`` shares limits, bound chat sessions, key revocation and
the resume journal through Redis; ``--workers`` runs several processes on
one machine's sockets, with one ``/metrics``. Nothing here is imported
unless configured: a single process keeps its limits, subscriptions and
resume journal in memory, and its idle footprint does not grow by a Redis
client.
"""
