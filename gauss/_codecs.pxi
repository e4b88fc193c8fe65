# Included by _core.pyx: the compiled quote codecs of the binary formats (avro, protobuf).
# Their pure twins are gauss/_pycodecs.py; names are exported through _core.pyx's __all__.
