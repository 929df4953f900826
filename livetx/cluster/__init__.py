"""Several processes and machines serving as one, through Redis (``[cluster] redis``).

Nothing here is imported unless ``[cluster] redis`` is set: a single process
keeps its limits, subscriptions and resume journal in memory, and its idle
footprint does not grow by a Redis client.
"""
