"""The raw simulator client (`connect`) for the simulator's own tests."""

from __tests__.simulated import connect

__all__ = ["connect"]
