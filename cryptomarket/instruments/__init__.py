"""Deribit instruments as tickers: their listing, names, ticker frames and rows."""
