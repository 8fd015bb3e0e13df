"""Users: their Deribit keys (encrypted), their sessions, and their account data."""
