"""bench CLI commands (being written)."""
