"""Spec files as text: the one-line error, key -> line numbers, and `--set` overrides.

Parsing stays with `yaml.safe_load`; a second pass over the safe loader's node tree
(`yaml.compose` with SafeLoader) only records the line of every key, so that an error about
`base.optim.lr` can point at the line that set it, or at `--set` when an override did.
"""

from __future__ import annotations

from typing import NoReturn, Protocol

import yaml

from models.errors import ConfigError
from nlsweep.config.builder import set_path

MAX_SHOWN = 300
"""Characters of a value or explanation an error prints at most: a message stays one line
that a person reads, whatever the spec holds."""


def clip(text: str, limit: int = MAX_SHOWN) -> str:
    text = " ".join(str(text).split())  # one line, whatever the value held
    return text if len(text) <= limit else text[: limit - 25] + f"... [{len(text)} chars]"


class LoadedSpec(Protocol):
    """What an error about a loaded spec needs of it: its file and its key -> line map."""

    path: str
    lines: dict


class SpecError(Exception):
    """A spec problem, printed as one line `FILE:LINE: key: expected`."""

    def __init__(self, file: str, line: int | str, key: str, expected: str):
        key, expected = clip(key, 120), clip(expected)
        super().__init__(f"{file}:{line}: {key}: {expected}")
        self.file, self.line, self.key, self.expected = file, line, key, expected

    def __reduce__(self):
        return (SpecError, (self.file, self.line, self.key, self.expected))

    @classmethod
    def at(cls, spec: LoadedSpec, key: str, expected: str) -> SpecError:
        """An error about `key` of an already loaded spec, at that key's line."""
        return cls(spec.path, locate(spec.lines, key), key, expected)


def refuse_aliases(text: str, file: str, where: int | str | None = None) -> None:
    """Anchors and aliases (`&a`, `*a`) make a few lines stand for gigabytes once expanded
    (the "billion laughs"); a spec is read as written, each value once. The event stream is
    scanned without building anything, so the check costs the text's length."""
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                line = where or event.start_mark.line + 1
                raise SpecError(file, line, "yaml", "no anchors or aliases (&name, *name): "
                                "write each value out")  # fmt: skip
    except yaml.YAMLError:
        return  # the parser reports it, with its line


def line_map(text: str) -> dict[str, int]:
    """Dotted key path -> 1-based line of the key, from the safe loader's node tree."""
    lines: dict[str, int] = {}

    def walk(node, prefix: str, dotted_keys: bool) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}{k.value}"
                lines[key] = k.start_mark.line + 1
                # `space` keys are already dotted paths; their values are distributions.
                walk(v, key + ".", dotted_keys=(key == "space"))
        elif isinstance(node, yaml.SequenceNode):  # data.phases[i].steps and the like
            for i, item in enumerate(node.value):
                key = f"{prefix.removesuffix('.')}[{i}]"
                lines[key] = item.start_mark.line + 1
                walk(item, key + ".", dotted_keys)

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines
    walk(root, "", False)
    return lines


def locate(lines: dict[str, int], key: str) -> int:
    while key:
        if key in lines:
            return lines[key]
        key = key.rpartition(".")[0]
    return 1


class Reporter:
    """Raises SpecError at the line of a key, or at `--set` when an override set it."""

    def __init__(self, file: str, lines: dict[str, int]):
        self.file, self.lines = file, lines
        self.overridden: set[str] = set()

    def __call__(self, key: str, expected: str, where: int | str | None = None) -> NoReturn:
        if where is None and any(key == k or key.startswith(k + ".") for k in self.overridden):
            where = "--set"
        raise SpecError(self.file, where or locate(self.lines, key), key, expected)


def apply_override(data: dict, item: str, err: Reporter) -> dict:
    key, sep, text = item.partition("=")
    if not sep or not key:
        err(item, "KEY=VALUE, e.g. base.train.steps=50", where="--set")
    refuse_aliases(text, err.file, where="--set")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        err(key, f"a YAML value, got {text!r}", where="--set")
    err.overridden.add(key)
    if key.startswith("space."):
        return {**data, "space": {**(data.get("space") or {}), key[len("space.") :]: value}}
    try:
        return set_path(data, key, value)
    except ConfigError as e:
        err(key, e.expected, where="--set")
