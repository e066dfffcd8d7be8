"""The embedded SQLite store in the state dir: invocation records and their log lines."""
