"""Built-in transport plugins: ``tcp-server``, ``tcp-client`` (tcp.py) and ``nats`` (nats.py, NATS / JetStream)."""
