"""The compiled kernels, their twins and ``gauss/_core.pyi`` declare one API."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from types import ModuleType

import gauss._pycore as pure

STUB = Path(pure.__file__).with_name("_core.pyi")
CLASSES = [name for name in pure.__all__ if inspect.isclass(getattr(pure, name))]


def public(cls: type) -> set[str]:
    return {
        name
        for klass in cls.__mro__
        if klass is not object and klass.__module__ not in ("collections.abc", "typing")
        for name in vars(klass)
        if not name.startswith("_")
    }


def stub_members() -> dict[str, set[str]]:
    tree = ast.parse(STUB.read_text())
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}

    def members(node: ast.ClassDef) -> set[str]:
        names = set()
        for item in node.body:
            if isinstance(item, ast.FunctionDef):
                names.add(item.name)
            elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                names.add(item.target.id)
        for base in node.bases:
            if isinstance(base, ast.Name) and base.id in classes:
                names |= members(classes[base.id])
        return {n for n in names if not n.startswith("_")}

    return {name: members(node) for name, node in classes.items()}


def test_stub_declares_every_public_member_of_the_twins() -> None:
    stub = stub_members()
    stub_all = next(
        node.value
        for node in ast.parse(STUB.read_text()).body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__"
    )
    assert [ast.literal_eval(e) for e in stub_all.elts] == pure.__all__  # type: ignore[attr-defined]
    for name in CLASSES:
        twin = public(getattr(pure, name))
        # The twin's plain attributes (set in __init__) are properties or fields in the stub.
        instance_attrs = {"max_frame_bytes", "capacity", "timeframes_ms", "hold_buckets", "late_counts", "coalesce_open", "batch_keys", "spans", "ts_ms", "key", "data", "seq", "max_key_bytes"}
        assert twin - stub[name] == set(), name
        assert stub[name] - twin - instance_attrs == set(), name


def test_compiled_module_has_the_twins_api(twins: tuple[ModuleType, ModuleType]) -> None:
    compiled, _ = twins
    assert compiled.__all__ == pure.__all__
    assert compiled.QUOTE_FIELDS is pure.QUOTE_FIELDS
    assert compiled.DEFAULT_MAX_FRAME_BYTES == pure.DEFAULT_MAX_FRAME_BYTES
    for name in CLASSES:
        assert public(getattr(pure, name)) <= set(dir(getattr(compiled, name))), name


def test_gauss_core_exports_one_build() -> None:
    core = importlib.import_module("gauss.core")
    module = importlib.import_module("gauss._core" if core.CORE == "cython" else "gauss._pycore")
    for name in pure.__all__:
        assert getattr(core, name) is getattr(module, name)
