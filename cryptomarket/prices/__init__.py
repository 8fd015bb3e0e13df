"""Index prices: live ingest from Deribit, the price store, and the price history API."""
