"""Getting market events to the clients that watch them."""
