"""Built-in format plugins."""
