"""The VLNHMM's settings, and the typed-settings machinery every config class uses.

A setting is declared once, as a dataclass field made by :func:`setting`: its type (the
annotation; ``Literal[...]`` for choices), its default (the paper's value), its allowed range
and a one-line doc.  ``__post_init__`` calls :func:`check_fields`, so an object that exists is
valid; rules that tie settings together live in the class (``HMMConfig._check_rules``).
Paper notation: |Z| = ``num_states``, M = ``num_clusters``, k = |Z| / M states per block,
lambda = ``state_dropout``, k' = (1 - lambda) k live states per block in training.
This module imports nothing heavy: the Snakefile uses it to build the DAG.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, Literal


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class ConfigError(ValueError):
    """An inconsistent or mistyped configuration (raised before any job runs)."""


def setting(default: Any = dataclasses.MISSING, doc: str = "", *, min: float | None = None,
            max: float | None = None, below: float | None = None, above: float | None = None):
    """A dataclass field with its doc and range: ``min <= value <= max``, ``above < value < below``."""
    return dataclasses.field(default=default, metadata={"doc": doc, "min": min, "max": max,
                                                        "below": below, "above": above})


def _describe(hint) -> str:
    """'an integer', 'one of a, b', 'true or false' ... for error messages and the settings doc."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return " or ".join(_describe(a) for a in inner) + " or null"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[hint]


def _coerce(value: Any, hint) -> tuple[bool, Any]:
    """(ok, value converted to the hint's type) -- ints are accepted for floats, "1e-3" too."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return value in args, value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return type(None) in args, None
        return _coerce(value, next(a for a in args if a is not type(None)))
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return isinstance(value, (int, float)) and not isinstance(value, bool), float(value) \
            if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    return isinstance(value, hint), value


def _range_text(meta: dict) -> str:
    parts = [f">= {meta['min']:g}" if meta.get("min") is not None else "",
             f"> {meta['above']:g}" if meta.get("above") is not None else "",
             f"<= {meta['max']:g}" if meta.get("max") is not None else "",
             f"< {meta['below']:g}" if meta.get("below") is not None else ""]
    return " and ".join(p for p in parts if p)


def check_fields(obj) -> None:
    """Check (and coerce) every field of a frozen dataclass against its type and range."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        object.__setattr__(obj, f.name, _checked(f, hints[f.name], getattr(obj, f.name)))


def check_values(cls, values: dict, where: str) -> None:
    """Check each of ``values`` that names a field of ``cls`` against that field's type and range alone (a
    ``defaults:`` section, whose value a narrower section may override before any run is built from it)."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in values:
            try:
                _checked(f, hints[f.name], values[f.name])
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from None


def _checked(f, hint, got):
    """``got`` coerced to field ``f``'s type ``hint`` within its range, else a ConfigError naming the field."""
    ok, value = _coerce(got, hint)
    meta = f.metadata
    if ok and isinstance(value, (int, float)) and not isinstance(value, bool):
        ok = not ((meta.get("min") is not None and value < meta["min"])
                  or (meta.get("max") is not None and value > meta["max"])
                  or (meta.get("below") is not None and value >= meta["below"])
                  or (meta.get("above") is not None and value <= meta["above"]))
    if not ok:
        rng = _range_text(meta)
        text = (" (a value nested inside --config arrives as text: set nested values in a --configfile)"
                if isinstance(got, str) and _is_number(got) else "")
        raise ConfigError(f"`{f.name}` must be {_describe(hint)}{' ' + rng if rng else ''}, got {got!r}{text}")
    return value


def from_dict(cls, values: dict, where: str = ""):
    """``cls(**values)``, with unknown keys and bad values reported by name (and ``where``)."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    prefix = f"{where}: " if where else ""
    if unknown:
        raise ConfigError(f"{prefix}unknown setting(s) {', '.join(unknown)} (settings: {', '.join(sorted(names))})")
    try:
        return cls(**values)
    except (ConfigError, TypeError) as err:  # TypeError: a required setting is missing
        raise ConfigError(f"{prefix}{err}") from None


def settings_table(cls, title: str) -> str:
    """A markdown table of the class's settings: name, type, default, doc (for config/README.md)."""
    hints = typing.get_type_hints(cls)
    rows = [f"### {title}", "", "| setting | type | default | meaning |", "|---|---|---|---|"]
    for f in fields(cls):
        rng = _range_text(f.metadata)
        default = "per model" if f.default is dataclasses.MISSING else (
            "null" if f.default is None else str(f.default).lower() if isinstance(f.default, bool) else f.default)
        doc = f.metadata.get("doc", "").replace("|", "\\|")
        rows.append(f"| `{f.name}` | {_describe(hints[f.name])}{' ' + rng if rng else ''} | {default} | {doc} |")
    return "\n".join(rows) + "\n"


class Settings:
    """Base of the settings dataclasses: a constructed object has been checked (``check_fields``)."""

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class HMMConfig(Settings):
    """The VLNHMM (paper sections 3-5, A.4); defaults are the paper's Table 1 model."""

    num_states: int = setting(32768, "|Z|: hidden states", min=1)
    num_clusters: int = setting(128, "M: emission blocks = Brown clusters (1 with constraint none)", min=1)
    constraint: Literal["brown", "uniform", "none"] = setting(
        "brown", "which states may emit a word: its Brown cluster's block, random states per word, or all")
    states_per_word: int | None = setting(None, "constraint uniform only: random states per word", min=1)
    state_repr: Literal["independent", "factored"] = setting(
        "independent", "state embeddings: one per state, or block embedding + state embedding (Table 4)")
    neural: bool = setting(True, "residual-MLP parameterization; false = free logits (Table 2, - neural)")
    hidden: int = setting(256, "h: embedding and MLP width", min=1)
    state_dropout: float = setting(0.5, "lambda: share of each block's states dropped per batch", min=0, below=1)
    transition_dropout: float = setting(0.0, "share of transition logits dropped per batch (uniform ablation)",
                                        min=0, below=1)
    eos_reset: Literal["none", "train-in-window", "train-in-and-between-windows", "always"] = setting(
        "train-in-window",
        "after <eos> draw the next state from the start distribution: never; in training inside a window only "
        "(the released code's --reset_eos 1, not at window boundaries, never at evaluation; the default: the "
        "paper is silent, so the released run command decides); in training inside and between windows; "
        "always (training and evaluation)")
    init: Literal["kaiming", "torch-default"] = setting(
        "kaiming", "initial weights: kaiming = Kaiming uniform on every matrix, word bias 0 (paper A.3); "
        "torch-default = as PyTorch leaves them (the released code): embeddings N(0, 1), linear layers and the "
        "word projection and bias U(+-1/sqrt(fan_in)); the scalar model's logits N(0, 1)")
    clusters: Literal["brown-clustering", "authors", "paths-file"] = setting(
        "brown-clustering", "where the Brown clusters come from (constraint brown; read by no other): our run "
        "of the brown-clustering package; the authors' wcluster `paths` file for this M (harvardnlp/hmm-lm at "
        "commit f52e860, downloaded, sha256 checked; the released code's); or `cluster_paths`, a wcluster "
        "`paths` file of your own")
    cluster_paths: str | None = setting(None, "a wcluster `paths` file (bits TAB word TAB count; vocabulary "
                                        "words missing from it join the last cluster): clusters paths-file "
                                        "reads it; clusters authors reads it instead of downloading, if its "
                                        "sha256 is the pinned one")
    backend: Literal["torch", "tvm", "matmul"] = setting(
        "torch", "forward/backward scans: plain PyTorch in log space (the reference), TVM kernels, or matmul: "
        "max-shifted matrix products in probability space (hmm.matmul_scan; the fast one on CPU)")

    def __post_init__(self):
        super().__post_init__()
        self._check_rules()

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

    @property
    def scan_sizes(self) -> set[int]:
        """Live states per step the scans see: k' in training, k at evaluation."""
        return {self.kept_per_block, self.states_per_block}

    def _check_rules(self) -> None:
        """Raise ConfigError for combinations the model does not define."""
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
        if self.clusters == "paths-file" and not self.cluster_paths:
            raise ConfigError("clusters paths-file needs cluster_paths: the wcluster paths file to read")
        if self.clusters == "brown-clustering" and self.cluster_paths is not None:
            raise ConfigError("cluster_paths goes with clusters: authors (a local copy) or paths-file")
        k = self.states_per_block
        kept = k * (1 - self.state_dropout)
        if abs(kept - round(kept)) > 1e-9 or round(kept) < 1:
            raise ConfigError(f"state_dropout {self.state_dropout} must keep a whole number >= 1 of the {k} states per block")
        if self.state_repr == "factored" and self.constraint == "uniform":
            raise ConfigError("state_repr factored needs blocks: not available with constraint uniform")
        if self.state_repr == "factored" and (not self.neural or self.hidden % 2):
            raise ConfigError("state_repr factored needs neural: true and an even hidden size")
