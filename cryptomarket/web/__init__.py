"""The live dashboard at `/` (SPEC section 6): one page and the files it loads, all served here."""
