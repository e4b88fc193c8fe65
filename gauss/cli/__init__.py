"""Command-line entry points (console scripts of the package)."""
