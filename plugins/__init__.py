"""Built-in Gauss plugins, installed as ``gauss_plugins``."""
