"""Built-in middleware plugins."""
