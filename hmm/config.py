"""Typed run configuration: the pipeline's ``runs:`` registry resolved into dataclasses.

A run's settings are ``defaults.train`` (training loop), then ``defaults.<model>``, then the
run's own overrides.  Every key must belong to the run's model or to the training loop.
This module has no heavy imports: the Snakefile loads it to build the DAG.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from typing import Any


class ConfigError(ValueError):
    """A run's configuration is inconsistent (raised before any job runs)."""


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 16
    bptt: int = 32
    lr: float = 1e-3
    epochs: float = 50
    weight_decay: float = 0.0
    clip: float | None = 5.0
    evals_per_epoch: int = 4
    lr_decay: float = 0.25
    patience: int = 8
    seed: int = 1111
    device: str = "auto"
    max_steps: int | None = None
    max_seconds: float | None = None
    matmul_precision: str = "highest"
    eval_batch_size: int = 16


@dataclass(frozen=True)
class KN5Config:
    order: int = 5


@dataclass(frozen=True)
class FFConfig:
    order: int = 5
    hidden: int = 256
    dropout: float = 0.3


@dataclass(frozen=True)
class LSTMConfig:
    layers: int = 2
    hidden: int = 256
    dropout: float = 0.3


@dataclass(frozen=True)
class HMMConfig:
    num_states: int = 32768
    num_clusters: int = 128
    constraint: str = "brown"
    states_per_word: int | None = None
    state_repr: str = "independent"
    neural: bool = True
    hidden: int = 256
    state_dropout: float = 0.5
    transition_dropout: float = 0.0
    eos_reset: str = "none"
    backend: str = "torch"

    @property
    def states_per_block(self) -> int:
        """k: states that may emit a given word (the live states of one step at evaluation)."""
        if self.constraint == "uniform":
            return self.states_per_word
        return self.num_states // self.num_clusters

    @property
    def kept_per_block(self) -> int:
        """k' = (1 - state_dropout) k: live states of one step during training."""
        return round(self.states_per_block * (1 - self.state_dropout))

    def check(self) -> None:
        """Raise ConfigError for combinations the model does not define."""
        k = self.states_per_block
        if self.constraint == "uniform":
            if not self.states_per_word or self.states_per_word > self.num_states:
                raise ConfigError("constraint uniform needs 1 <= states_per_word <= num_states")
            if self.state_dropout:
                raise ConfigError("constraint uniform has no blocks to drop states from: set state_dropout: 0 "
                                  "(the paper drops transition logits instead: transition_dropout)")
        else:
            if self.states_per_word is not None:
                raise ConfigError("states_per_word applies to constraint uniform only (k = num_states / num_clusters)")
            if self.constraint == "none" and self.num_clusters != 1:
                raise ConfigError("constraint none means one block holding every word: set num_clusters: 1")
            if self.num_states % self.num_clusters:
                raise ConfigError(f"num_states {self.num_states} is not a multiple of num_clusters {self.num_clusters}")
        kept = k * (1 - self.state_dropout)
        if abs(kept - round(kept)) > 1e-9 or round(kept) < 1:
            raise ConfigError(f"state_dropout {self.state_dropout} must keep a whole number >= 1 of the {k} states per block")
        if self.state_repr == "factored" and self.constraint == "uniform":
            raise ConfigError("state_repr factored needs blocks: not available with constraint uniform")
        if self.state_repr == "factored" and (not self.neural or self.hidden % 2):
            raise ConfigError("state_repr factored needs neural: true and an even hidden size")
        if not self.neural and self.state_repr != "independent":
            raise ConfigError("neural: false has no state embeddings: leave state_repr independent")


MODELS = {"kn5": KN5Config, "ff": FFConfig, "lstm": LSTMConfig, "vlnhmm": HMMConfig}
TRAINED = {"ff", "lstm", "vlnhmm"}


def _names(cls) -> set[str]:
    return {f.name for f in fields(cls)}


@dataclass(frozen=True)
class Run:
    name: str
    dataset: str
    model: str
    settings: Any
    train: TrainConfig | None
    rows: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.name}"

    @property
    def needs_gpu(self) -> bool:
        return self.train is not None and self.train.device != "cpu"

    @property
    def kernel_target(self) -> str:
        """The TVM target whose kernels this run loads: llvm on the CPU, cuda on a GPU."""
        return "llvm" if self.train is not None and self.train.device == "cpu" else "cuda"

    @property
    def scan_sizes(self) -> set[int]:
        """Live states per step the run's scans see: k' in training, k at evaluation (VLNHMM only)."""
        if self.model != "vlnhmm":
            return set()
        return {self.settings.kept_per_block, self.settings.states_per_block}

    def to_dict(self) -> dict:
        return {
            "name": self.name, "dataset": self.dataset, "model": self.model, "rows": list(self.rows),
            "settings": dataclasses.asdict(self.settings),
            "train": dataclasses.asdict(self.train) if self.train else None,
        }

    def result_spec(self) -> dict:
        """What the run computes: everything but ``rows`` (which only places it in tables)."""
        spec = self.to_dict()
        del spec["rows"]
        return spec

    @classmethod
    def from_dict(cls, d: dict) -> "Run":
        return cls(d["name"], d["dataset"], d["model"], MODELS[d["model"]](**d["settings"]),
                   TrainConfig(**d["train"]) if d["train"] else None, tuple(d.get("rows", ())))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, path) -> "Run":
        with open(path) as f:
            return cls.from_dict(json.load(f))


# Settings that say where or for how long a run executes, not what it computes.
EXECUTION_SETTINGS = frozenset({"device", "max_seconds"})


def spec_differences(trained: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """(setting, trained value, current value) for every setting in which two result specs differ.

    Both are :meth:`Run.result_spec` dicts; settings in :data:`EXECUTION_SETTINGS` are ignored.
    """
    diffs = [(k, trained.get(k), current.get(k)) for k in ("name", "dataset", "model")
             if trained.get(k) != current.get(k)]
    for part in ("settings", "train"):
        old, new = trained.get(part) or {}, current.get(part) or {}
        diffs += [(key, old.get(key), new.get(key)) for key in sorted(set(old) | set(new))
                  if key not in EXECUTION_SETTINGS and old.get(key) != new.get(key)]
    return diffs


def stale_reason(trained: dict | None, current: dict) -> str | None:
    """None if a result was computed from ``current``; else a status saying what differs."""
    if trained is None:
        return "stale: the result does not record the settings it was trained from (rerun it)"
    diffs = spec_differences(trained, current)
    if not diffs:
        return None
    was = ", ".join(f"{k}={v}" for k, v, _ in diffs)
    now = ", ".join(f"{k}={v}" for k, _, v in diffs)
    return f"stale: trained with {was}, the config says {now} (rerun it)"


def resolve_run(entry: dict, defaults: dict) -> Run:
    """One ``runs:`` entry with its defaults applied, as a typed Run."""
    entry = dict(entry)
    name, dataset, model = entry.pop("name"), entry.pop("dataset"), entry.pop("model")
    rows = tuple(entry.pop("rows", ()))
    where = f"run {dataset}/{name}"
    model_cls = MODELS[model]
    model_keys, train_keys = _names(model_cls), _names(TrainConfig) if model in TRAINED else set()
    merged: dict = {}
    if model in TRAINED:
        merged.update(defaults.get("train", {}))
    merged.update(defaults.get(model, {}))
    for key in entry:
        if key not in model_keys | train_keys:
            raise ConfigError(f"{where}: `{key}` is not a setting of model {model} "
                              f"(its settings: {', '.join(sorted(model_keys | train_keys))})")
    merged.update(entry)
    settings = model_cls(**{k: v for k, v in merged.items() if k in model_keys})
    train = TrainConfig(**{k: v for k, v in merged.items() if k in train_keys}) if model in TRAINED else None
    if isinstance(settings, HMMConfig):
        try:
            settings.check()
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    return Run(name, dataset, model, settings, train, rows)


def resolve_runs(config: dict) -> list[Run]:
    runs = [resolve_run(e, config["defaults"]) for e in config["runs"]]
    seen: set[str] = set()
    for run in runs:
        if run.dataset not in config["datasets"]:
            raise ConfigError(f"run {run.key}: unknown dataset {run.dataset!r} (datasets: {', '.join(config['datasets'])})")
        if run.key in seen:
            raise ConfigError(f"run {run.key} is defined twice")
        seen.add(run.key)
    return runs
