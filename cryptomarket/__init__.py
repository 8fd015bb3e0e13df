"""CryptoMarket: a self-hosted gateway between applications and the Deribit exchange."""

__version__ = "0.1.0"
