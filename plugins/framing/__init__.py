"""Built-in framing plugins."""
