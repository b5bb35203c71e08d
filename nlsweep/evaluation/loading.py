"""A finished trial as a model to evaluate: its config, weights and tokenizer, found from its
MLflow run id, or taken from a `Trainer` in memory.

From a run id (`trial_from_run`):
- the config is the run's `config.json` artifact (the resolved trial config the sweep wrote);
- the weights are the final checkpoint: the `checkpoint/trainer.pt` artifact when the sweep
  logged it (`tracking.log_checkpoints: final`), else the folder the run's
  `nlsweep.checkpoint` tag names in experiment storage (a path or a storage URI), else the
  folder or file given as `checkpoint`;
- the tokenizer is the trial's own: its corpus is opened from the prepared cache as a trial
  opens it (prepared again from the data if the cache is gone), so char and SentencePiece
  trials encode exactly as they trained.
Checkpoints load with `torch.load(weights_only=True)`; code runs only from installed
`nlsweep.plugins` entry points and from the plugins of a spec file given as `spec`, never
from the tracking store or storage.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models.capabilities import build_model
from models.common import ConfigError
from models.registry import model_kind
from nlsweep.config.plugins import PluginError, load_entry_points, load_plugins
from nlsweep.data.load import load_corpus
from nlsweep.tracking.tags import TAG_CHECKPOINT
from nlsweep.training import checkpoint
from nlsweep.training.trial import TrialConfig


class LoadError(RuntimeError):
    """A trial that cannot be evaluated; the message is one line naming the run and why."""


@dataclass
class TrialModel:
    """What an evaluation needs of a trial: its model (eval mode), tokenizer and config, and
    its held-out token ids (the needles' haystack)."""

    model: nn.Module
    tokenizer: object
    cfg: TrialConfig
    name: str
    heldout: object = None

    @property
    def kind(self) -> str:
        return self.cfg.model.kind


def tokenizer_of(corpus, name: str):
    vocab = corpus.vocab
    if not hasattr(vocab, "encode") or not hasattr(vocab, "decode"):
        raise LoadError(
            f"{name}: its corpus has a vocabulary of ids without a tokenizer "
            f"({type(vocab).__name__}), so text cannot be encoded for it"
        )
    return vocab


def trial_from_trainer(trainer, name: str = "trainer") -> TrialModel:
    """The model a `Trainer` holds now (shared, not copied) with its tokenizer."""
    corpus = trainer.corpus
    return TrialModel(trainer.model, tokenizer_of(corpus, name), trainer.cfg, name,
                      getattr(corpus, "val", None))  # fmt: skip


def trial_from_state(cfg: TrialConfig, state: dict, device, name: str) -> TrialModel:
    """A model built from `cfg` with the weights of a training state (`Trainer.state_dict`)."""
    corpus = load_corpus(cfg.data)
    tokenizer = tokenizer_of(corpus, name)
    kind = model_kind(cfg.model.kind)
    model = build_model(kind, cfg.model, len(corpus.vocab), cfg.cms, cfg.teach)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LoadError(f"{name}: the checkpoint does not fit its config ({first})") from None
    model.to(device).eval()
    return TrialModel(model, tokenizer, cfg, name, getattr(corpus, "val", None))


def load_spec_plugins(spec: str | None) -> None:
    """Import the installed plugins, and those of the spec file `spec`."""
    import yaml

    try:
        load_entry_points()
        if spec:
            path = Path(spec)
            data = yaml.safe_load(path.read_text())
            entries = data.get("plugins") if isinstance(data, dict) else None
            load_plugins(entries, path.parent)
    except OSError as e:
        raise LoadError(f"spec {spec}: unreadable ({e.strerror})") from None
    except (PluginError, yaml.YAMLError) as e:
        raise LoadError(f"spec {spec}: plugins: {e}") from None


def _checkpoint_state(tracker, run_id: str, tags: dict, given: str | None, tmp: Path) -> dict:
    """The training state of the run's final checkpoint (see the module's docstring)."""
    if given:
        folder = Path(given)
        return checkpoint.load(folder.parent if folder.is_file() else folder)
    if f"checkpoint/{checkpoint.CHECKPOINT_FILE}" in tracker.artifacts(run_id, "checkpoint"):
        got = tracker.download(run_id, f"checkpoint/{checkpoint.CHECKPOINT_FILE}", tmp)
        return checkpoint.load(Path(got).parent)
    where = tags.get(TAG_CHECKPOINT)
    if not where:
        raise LoadError(
            f"run {run_id}: no checkpoint recorded (neither a checkpoint/ artifact nor the "
            f"{TAG_CHECKPOINT} tag of a finished trial); pass checkpoint=PATH"
        )
    import pyarrow.fs

    try:
        if "://" in where:
            fs, root = pyarrow.fs.FileSystem.from_uri(where)
        else:
            fs, root = pyarrow.fs.LocalFileSystem(), str(Path(where).resolve())
        (tmp / "ckpt").mkdir()
        pyarrow.fs.copy_files(root, str(tmp / "ckpt"), source_filesystem=fs)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LoadError(f"run {run_id}: checkpoint {where}: unreadable ({first})") from None
    return checkpoint.load(tmp / "ckpt")


def trial_from_run(
    run_id: str,
    tracking_uri: str,
    checkpoint_path: str | None = None,
    spec: str | None = None,
    device: str | torch.device = "cpu",
) -> TrialModel:
    """The finished trial of MLflow run `run_id` in the store at `tracking_uri`."""
    from nlsweep.tracking import Tracker

    load_spec_plugins(spec)
    tracker = Tracker(tracking_uri)
    if not tracker.has_run(run_id):
        raise LoadError(f"run {run_id}: not in the tracking store {tracking_uri}")
    tags = tracker.tags(run_id)
    with tempfile.TemporaryDirectory(prefix="nlsweep-eval-") as tmp:
        try:
            recorded = json.loads(Path(tracker.download(run_id, "config.json", tmp)).read_text())
        except Exception as e:  # noqa: BLE001 - MLflow raises its own types for a missing file
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise LoadError(f"run {run_id}: no readable config.json artifact ({first}); is it "
                            "a trial run of an nlsweep sweep?") from None  # fmt: skip
        try:
            cfg = TrialConfig.from_recorded(recorded["config"])
        except (ConfigError, KeyError, TypeError) as e:
            hint = "" if spec else "; if its model kind is a plugin, pass spec=THE_SPEC_FILE"
            raise LoadError(f"run {run_id}: config.json: {e}{hint}") from None
        try:
            state = _checkpoint_state(tracker, run_id, tags, checkpoint_path, Path(tmp))
        except checkpoint.CheckpointError as e:
            raise LoadError(f"run {run_id}: {e}") from None
    return trial_from_state(cfg, state, torch.device(device), tags.get("mlflow.runName", run_id))
