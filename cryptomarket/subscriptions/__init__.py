"""A user's tickers and intervals (the seed's "orders"), and how changes reach their streams."""
