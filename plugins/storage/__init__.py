"""Built-in storage plugins."""
