"""Built-in stage plugins."""
