"""Build Gauss: the package, its compiled kernels and the built-in plugins.

The Cython extension is optional: without a C compiler the install still
works on the pure-Python twins (``gauss.CORE == "python"``), with a warning.
"""

import os
import shutil

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))

# Files outside the package that the installed package needs at run time:
# the default configuration and the wire schemas (see gauss/resources.py).
SHIPPED_DATA = ["config.toml", "schemas"]


class BuildPyWithData(build_py):
    """Copy config.toml and schemas/ into gauss/_data inside the build."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "gauss", "_data")
        os.makedirs(target, exist_ok=True)
        for name in SHIPPED_DATA:
            source = os.path.join(HERE, name)
            dest = os.path.join(target, name)
            if os.path.isdir(source):
                shutil.copytree(source, dest, dirs_exist_ok=True)
            elif os.path.exists(source):
                shutil.copy2(source, dest)


class OptionalBuildExt(build_ext):
    """Compile what can be compiled; warn and fall back to the twins otherwise."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, no Cython, ...
            print(f"WARNING: gauss compiled kernels not built ({exc}); the pure-Python twins will be used")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"WARNING: building {ext.name} failed ({exc}); the pure-Python twins will be used")


def extensions():
    source = os.path.join("gauss", "_core.pyx")
    if not os.path.exists(os.path.join(HERE, source)):
        return []
    try:
        from Cython.Build import cythonize
        import numpy
    except ImportError:
        print("WARNING: Cython or numpy missing at build time; the pure-Python twins will be used")
        return []
    ext = Extension(
        "gauss._core",
        [source],
        depends=[os.path.join("gauss", "_codecs.pxi")],  # included by _core.pyx
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
        optional=True,
    )
    return cythonize([ext], language_level=3, compiler_directives={"boundscheck": False, "wraparound": False})


PLUGINS = {
    "gauss.transports": [
        "tcp-server = gauss_plugins.transport.tcp:TcpServer",
        "tcp-client = gauss_plugins.transport.tcp:TcpClient",
        "nats = gauss_plugins.transport.nats:NatsTransport",
    ],
    "gauss.framings": [
        "lines = gauss_plugins.framing.lines:LinesFraming",
        "length-prefixed = gauss_plugins.framing.length_prefixed:LengthPrefixedFraming",
    ],
    "gauss.middleware": [
        "gzip = gauss_plugins.middleware.gzip:GzipMiddleware",
        "lz4 = gauss_plugins.middleware.lz4:Lz4Middleware",
        "snappy = gauss_plugins.middleware.snappy:SnappyMiddleware",
    ],
    "gauss.codecs": [
        "json = gauss_plugins.format.json:JsonCodec",
        "csv = gauss_plugins.format.csv:CsvCodec",
        "protobuf = gauss_plugins.format.protobuf:ProtobufCodec",
        "avro = gauss_plugins.format.avro:AvroCodec",
    ],
    "gauss.storages": [
        "memory = gauss_plugins.storage.memory:MemoryStorage",
        "file = gauss_plugins.storage.file:FileStorage",
        "raw-file = gauss_plugins.storage.raw_file:RawFileStorage",
        "clickhouse = gauss_plugins.storage.clickhouse:ClickHouseStorage",
    ],
    "gauss.processors": [
        "ohlc = gauss_plugins.stage.ohlc:OhlcProcessor",
        "symbol-filter = gauss_plugins.stage.symbol_filter:SymbolFilter",
    ],
    "gauss.sinks": [
        "stream = gauss.sink:StreamSink",
    ],
    "console_scripts": [
        "gauss-serve = gauss.cli.serve:main",
        "gauss-quotes-gen = gauss.cli.quotes_gen:main",
        "gauss-grafana-datasource = gauss.grafana.plugin:main",
    ],
}

setup(
    name="gauss",
    version="0.1.0",
    description="Real-time market-data hub: TCP quote ingest, topics, OHLC candles, storage, REST/WebSocket API",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["gauss", "gauss.*"])
    + ["gauss_plugins"]
    + ["gauss_plugins." + p for p in find_packages("plugins")],
    package_dir={"gauss": "gauss", "gauss_plugins": "plugins"},
    package_data={
        "gauss": ["py.typed", "*.pyi", "*.pyx", "*.pxi"],
        "gauss.grafana.pluginv2": ["*.proto", "*.pyi"],
        "gauss.http": ["static/*", "static/*/*"],  # the dashboard (docs/dashboard.md)
    },
    ext_modules=extensions(),
    cmdclass={"build_ext": OptionalBuildExt, "build_py": BuildPyWithData},
    install_requires=[
        "gevent>=24.2",
        "gevent-websocket>=0.10",
        "falcon>=4.0",
        "numpy>=1.26",
        "ujson>=5.9",
        "msgspec>=0.18",
        "fastavro>=1.9",
        "protobuf>=4.25",
        "lz4>=4.3",
        "python-snappy>=0.7",
        "prometheus_client>=0.20",
        "sortedcontainers>=2.4",
        "requests>=2.31",
        "nats-py>=2.6",
    ],
    extras_require={
        "browser": ["playwright>=1.40"],  # tests/browser: drives Debian's chromium, downloads no browser
        "grafana": ["grpcio>=1.85.1", "grpcio-health-checking>=1.85.1", "protobuf>=7.35.1", "pyarrow>=15", "websocket-client>=1.7"],
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "pytest-xdist>=3.5",  # the pure tox env: its CPU-bound twin tests on two workers
            "hypothesis>=6.100",
            "requests>=2.31",
            "websocket-client>=1.7",
            "mypy>=1.10",
            "grpcio-tools>=1.60",
            "pyyaml>=6.0",
            "atheris>=2.3; sys_platform == 'linux' and platform_machine == 'x86_64'",  # tests/fuzz (tox -e fuzz)
        ],
    },
    entry_points=PLUGINS,
    zip_safe=False,
)
