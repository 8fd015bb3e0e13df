"""The periodic jobs as plain functions on the sync database path.

Celery's tasks (distributed mode) and the in-process scheduler of `serve` (embedded mode) call
these same functions. Each is idempotent: running one twice, or two at once, stores nothing twice.
"""
