"""`state.reset_at: document`: a carried state starts afresh where a row's stream enters a new
document, inside a window as well as between windows.

    eod         the corpus's end-of-document id: a split of documents is d1 eod d2 eod ...
    boundary    column t of row b when x[b, t] == eod. The eod token is read by a fresh state:
                it is the first token of the next document's context (what predicts that
                document's first token), while the token before it, which predicts eod, still
                sees its own document.
    segments    a window (B, T) is cut at every column where some row meets a boundary; the
                model reads the segments in order, its state carried from each to the next,
                and before a segment the rows that meet a boundary at its first column get
                the model's init_state rows (`torch.where` along state_batch_dim).

Why only models whose state is all a token sees of earlier calls (`state_is_context`): for
those a stream read in segments equals one pass, so with the resets every document is read
exactly as if it were alone from a fresh state, whatever the windows and their cuts. A model
whose attention sees its whole call would still attend across the boundary (and reading it
in segments would change what the other rows see), so it is refused, as is the surprise
objective, whose per-level outputs are one call's.
"""

from __future__ import annotations

import torch

from models.capabilities import member_of
from models.errors import ConfigError


def check_resettable(model_cls: type, kind: str, surprise: bool) -> None:
    """One line (ConfigError on state.reset_at) when the model cannot be reset by document."""
    who = f"{model_cls.__module__}.{model_cls.__qualname__}"
    if not member_of(model_cls, "carries_state", False):
        raise ConfigError("state.reset_at", f"unset: model kind {kind} keeps no state to reset "
                          f"({who} has no carries_state)")  # fmt: skip
    if not member_of(model_cls, "state_is_context", True):
        raise ConfigError("state.reset_at", f"unset: model kind {kind} attends across its "
                          f"whole call ({who}.state_is_context is False), so a reset inside a "
                          "window would not separate its documents")  # fmt: skip
    if surprise:
        raise ConfigError("state.reset_at", "unset with surprise.weights (the surprise "
                          "objective reads one call's per-level outputs)")  # fmt: skip


def boundary_columns(x: torch.Tensor, eod: int) -> list[int]:
    """The columns (after the first) where some row meets a document boundary."""
    cols = (x == eod).any(0).nonzero().flatten().tolist()
    return [c for c in cols if c > 0]


def _reset_rows(state, fresh, rows: torch.Tensor, dim: int):
    """`state` with the rows where `rows` is True replaced by `fresh`'s."""
    if state is None:
        return None  # every row is fresh already
    if isinstance(state, torch.Tensor):
        shape = [1] * state.dim()
        shape[dim] = -1
        return torch.where(rows.view(shape).to(state.device), fresh.to(state.dtype), state)
    return type(state)(_reset_rows(s, f, rows, dim) for s, f in zip(state, fresh))


class DocumentResets:
    """Reads windows with resets at document boundaries; `resets` counts the rows reset (the
    `state/document_resets` counter: evidence that the setting acted)."""

    def __init__(self, model, eod: int):
        self.model = model
        self.eod = eod
        self.dim = getattr(type(model), "state_batch_dim", 0)
        self.resets = 0

    def __call__(self, call, x: torch.Tensor, state, targets=None, count: bool = True):
        """(logits, state) of `call(x_segment, state, targets_segment)` over the segments of
        window `x`, the state reset by row at each boundary."""
        cuts = [0, *boundary_columns(x, self.eod), x.shape[1]]
        pieces = []
        for a, b in zip(cuts, cuts[1:]):
            rows = x[:, a] == self.eod
            if state is not None and bool(rows.any()):
                fresh = self.model.init_state(x.shape[0], x.device)
                state = _reset_rows(state, fresh, rows, self.dim)
                if count:
                    self.resets += int(rows.sum())
            seg_t = None if targets is None else targets[:, a:b]
            logits, state = call(x[:, a:b], state, seg_t)
            pieces.append(logits)
        return (pieces[0] if len(pieces) == 1 else torch.cat(pieces, 1)), state
