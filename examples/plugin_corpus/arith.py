"""A generated text corpus as an nlsweep plugin: arithmetic problems, one per line
(`17+25=42`), with their answers. `data: {corpus: arith, options: {...}}`.

Nothing to download, and the two splits cannot leak: a problem belongs to the held-out split
exactly when a fixed hash of its text says so, so no problem is in both. nlsweep tokenizes,
batches and scores the text like any other corpus (val/bpb, val/bpc, its leakage alarm).
"""

import random
import zlib
from dataclasses import dataclass

from models import ConfigError
from nlsweep import register_corpus


@dataclass
class ArithOptions:
    problems: int = 4000
    """Distinct problems generated, both splits together."""
    max_operand: int = 99
    """Operands are drawn from 0 .. max_operand."""
    ops: str = "+-"
    """Operators to draw from, any of + - *."""
    heldout_percent: int = 10
    """Percent of problems held out (chosen by hash, not by position)."""
    seed: int = 0

    def __post_init__(self):
        if self.problems < 20:
            raise ConfigError("problems", f"at least 20, got {self.problems}")
        if not 1 <= self.max_operand <= 10**6:
            raise ConfigError("max_operand", f"in [1, 1000000], got {self.max_operand}")
        if not self.ops or set(self.ops) - set("+-*"):
            raise ConfigError("ops", f"some of + - *, got {self.ops!r}")
        if not 1 <= self.heldout_percent <= 50:
            raise ConfigError("heldout_percent", f"in [1, 50], got {self.heldout_percent}")
        space = len(set(self.ops)) * (self.max_operand + 1) ** 2
        if self.problems > space // 2:
            raise ConfigError("problems", f"at most {space // 2} distinct problems with "
                              f"max_operand {self.max_operand}, got {self.problems}")  # fmt: skip


OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@register_corpus("arith", options=ArithOptions)
def arith_texts(cfg):
    """(training text, held-out text) for `cfg.options`."""
    o = cfg.options
    rng = random.Random(o.seed)
    seen, train, heldout = set(), [], []
    while len(seen) < o.problems:
        a, b = rng.randint(0, o.max_operand), rng.randint(0, o.max_operand)
        op = rng.choice(o.ops)
        line = f"{a}{op}{b}={OPS[op](a, b)}"
        if line in seen:
            continue
        seen.add(line)
        held = zlib.crc32(line.encode()) % 100 < o.heldout_percent
        (heldout if held else train).append(line)
    return "\n".join(train) + "\n", "\n".join(heldout) + "\n"
