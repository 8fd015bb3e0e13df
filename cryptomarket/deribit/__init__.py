"""Everything that talks to Deribit: connection, pool, credit budget, simulator."""
