"""Gauss's Grafana backend datasource (``gauss-grafana-datasource``).

A separate process that Grafana starts: it speaks Grafana's plugin protocol
over gRPC and talks to Gauss over the REST API and the WebSocket. It needs the
``gauss[grafana]`` extra (grpcio, pyarrow, websocket-client) and never imports
gevent. Entry point: :func:`gauss.grafana.plugin.main`.
"""

__all__: list[str] = []
