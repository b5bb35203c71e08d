"""Plugins: code the user chose to run, named by a spec's `plugins:` list or installed under
the `nlsweep.plugins` entry-point group, imported before the spec is validated so that what
they register (model kinds, ...) is known to validation.

A `plugins:` entry is an importable module name (`mypackage.models`), or a `.py` file or a
package folder given relative to the spec file. A file or folder is imported by its name
with its parent folder put on `sys.path` (and on `PYTHONPATH`, so that the local Ray's
workers import it the same way); the sweep ships it to a cluster's nodes with Ray's
`runtime_env` `py_modules`. Code is never loaded from experiment storage, checkpoints or the
tracking store.

Each plugin is recorded with a digest of its source (the file, or every `.py` file of its
package), so that `--resume`, `--extend` and `nlsweep rerun` refuse a plugin whose code has
changed since the sweep began.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import os
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ENTRY_POINT_GROUP", "Plugin", "PluginError", "import_again", "load_entry_points",
    "load_plugins",
]  # fmt: skip

ENTRY_POINT_GROUP = "nlsweep.plugins"


class PluginError(ValueError):
    """A plugin that cannot be used: `index` is its place in `plugins:` (None for an entry
    point); the message is one line."""

    def __init__(self, index: int | None, message: str):
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class Plugin:
    """One imported plugin: its module name, the folder that must be importable for it (a
    file's or package's parent; None for an installed module), its source files' digest and
    its distribution version where it has one."""

    name: str
    folder: str | None
    source: str | None
    digest: str
    version: str | None = None

    @property
    def record(self) -> dict:
        return {"name": self.name, "digest": self.digest, "version": self.version,
                "source": self.source}  # fmt: skip


def _last_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()
    return text[-1] if text else type(e).__name__


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _sources(module) -> tuple[str | None, list[Path]]:
    """The module's source: its file, or every .py file of its package."""
    file = getattr(module, "__file__", None)
    if not file:
        return None, []
    path = Path(file)
    if path.name == "__init__.py":
        return str(path.parent), [
            p for p in path.parent.rglob("*.py") if "__pycache__" not in p.parts
        ]
    return str(path), [path]


@functools.cache
def _distributions() -> dict[str, list[str]]:
    """Top-level module -> installed distributions: a scan of every installed package's
    metadata (about 0.2 s here), made once per process, not once per spec and plugin."""
    return importlib.metadata.packages_distributions()


def _version(name: str) -> str | None:
    top = name.split(".")[0]
    for dist in _distributions().get(top, []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _on_path(folder: str) -> None:
    if folder not in sys.path:
        sys.path.insert(0, folder)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if folder not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([folder, *parts])


def _import(index: int | None, name: str):
    try:
        return importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - any failure of the user's code is one line
        raise PluginError(index, f"{name}: {_last_line(e)}") from None


def load_plugin(entry: str, spec_dir: Path, index: int | None = None) -> Plugin:
    """Import one `plugins:` entry (a module name, or a .py file or package folder relative
    to `spec_dir`) and describe it."""
    if not isinstance(entry, str) or not entry.strip():
        raise PluginError(index, "a module name, or a .py file or package folder")
    looks_like_path = entry.endswith(".py") or "/" in entry or os.sep in entry
    folder = None
    if looks_like_path or (spec_dir / entry).exists():
        path = (spec_dir / entry).expanduser().resolve()
        if path.is_file() and path.suffix == ".py":
            name = path.stem
        elif path.is_dir() and (path / "__init__.py").is_file():
            name = path.name
        elif path.is_dir():
            raise PluginError(index, f"{path}: a package folder (with __init__.py) or a .py file")
        else:
            raise PluginError(index, f"{path}: no such .py file or package folder")
        if not name.isidentifier():
            raise PluginError(index, f"{path}: its name must be a Python identifier")
        folder = str(path.parent)
        _on_path(folder)
        module = _import(index, name)
        found = Path(getattr(module, "__file__", "") or "").resolve()
        if found not in (path, path / "__init__.py"):
            raise PluginError(index, f"{path}: the name {name} is already taken by {found}")
    else:
        name = entry
        module = _import(index, name)
    source, files = _sources(module)
    return Plugin(name, folder, source, _digest(files) if files else "", _version(name))


def load_plugins(entries, spec_dir: Path) -> list[Plugin]:
    """Import every `plugins:` entry, in order."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise PluginError(None, "a list of module names, .py files or package folders")
    return [load_plugin(e, spec_dir, i) for i, e in enumerate(entries)]


def load_entry_points() -> list[Plugin]:
    """Import every installed `nlsweep.plugins` entry point (Python imports each module
    once per process; the digests are read from disk each time, as for `load_plugin`)."""
    out = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001
            raise PluginError(
                None, f"entry point {ep.name} ({ep.value}): {_last_line(e)}"
            ) from None
        module = sys.modules.get(ep.module)
        source, files = _sources(module) if module else (None, [])
        out.append(Plugin(ep.module, None, source, _digest(files) if files else "",
                          ep.dist.version if ep.dist else None))  # fmt: skip
    return out


def import_again(plugins: list[Plugin]) -> None:
    """Import recorded plugins by name in another process (a Ray worker). A cluster's nodes
    have them through Ray's `py_modules`; a local Ray's workers through PYTHONPATH, or, if
    that was lost, from the folder recorded on this machine."""
    for p in plugins:
        try:
            importlib.import_module(p.name)
        except ModuleNotFoundError:
            if not (p.folder and os.path.isdir(p.folder)):
                raise
            sys.path.insert(0, p.folder)
            importlib.import_module(p.name)
