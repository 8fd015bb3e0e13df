"""Distributed mode (REDIS_URL set): Redis connections, caches, the control channel, leadership."""
