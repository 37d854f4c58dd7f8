"""Code only the tests use (kept out of the installed package)."""
