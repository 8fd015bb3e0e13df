"""The ledger-checked chaos harness (`make chaos`, `python -m bench.chaos`)."""
