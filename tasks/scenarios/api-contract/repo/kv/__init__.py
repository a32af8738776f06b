"""An in-memory key-value store with expiry."""
