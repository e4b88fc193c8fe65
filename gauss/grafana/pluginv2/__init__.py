"""Generated gRPC stubs of Grafana's plugin protocol (``pluginv2``) and go-plugin's controller.

Do not edit the ``*_pb2*.py`` files: regenerate them from the ``.proto`` files
with the command written at the top of ``backend.proto`` (also in docs/grafana.md).
"""
