"""A target that fails on purpose (only with ``GAUSS_FUZZ_SELFTEST=1``): the runner's test that crashes are reported."""

from __future__ import annotations

SEEDS = [b"fine", b"FUZZ!"]


def check(data: bytes) -> None:
    assert not data.startswith(b"FUZZ"), "the planted defect"
