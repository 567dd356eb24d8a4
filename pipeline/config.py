"""The pipeline's run registry: the config's ``runs:`` resolved into typed, validated runs.

A run's settings are its model's dataclass defaults (the paper's values), the model's training
defaults (:data:`TRAIN_DEFAULTS`), the config's ``defaults.train`` and ``defaults.<model>``
overrides, then the run's own.  Every setting is declared once, in its dataclass
(:class:`hmm.config.HMMConfig`, :class:`TrainConfig` and the baselines' below), and checked
there; this module adds the rules between runs (unique names, known datasets) and derives
what the workflow needs from a run (its input files, kernel target, GPU, scan sizes).
It imports nothing heavy: the Snakefile uses it to build the DAG.

    python -m pipeline.config --doc    # config/README.md: every setting with type, default, meaning
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hmm.config import ConfigError, HMMConfig, Settings, check_values, from_dict, setting, settings_table
from hmm.kernels import target_for
from pipeline.authors import ClusterFileError, authors_source

__all__ = ["ConfigError", "Run", "run_history", "TrainConfig", "resolve_run", "resolve_runs", "stale_reason"]


@dataclass(frozen=True)
class TrainConfig(Settings):
    """The training loop shared by FF, LSTM and VLNHMM (paper A.3)."""

    batch_size: int = setting(doc="streams per batch (B)", min=1)
    bptt: int = setting(doc="tokens per window (T)", min=1)
    lr: float = setting(doc="AdamW learning rate", above=0)
    epochs: float = setting(doc="passes over the training data", above=0)
    weight_decay: float = setting(0.0, "AdamW weight decay", min=0)
    clip: float | None = setting(5.0, "gradient norm clip (null: none)", above=0)
    evals_per_epoch: int = setting(4, "validation checks per epoch", min=1)
    lr_decay: float = setting(0.25, "lr multiplier after `patience` checks without improvement", above=0, max=1)
    patience: int = setting(8, "checks without improvement before the lr decays", min=0)
    plateau: Literal["min-valid-nll", "max-valid-loglik"] = setting(
        "min-valid-nll", "what counts as an improvement (PyTorch ReduceLROnPlateau, default relative threshold "
        "1e-4): min-valid-nll = valid NLL per token 0.01 % below the best (ours; paper A.3 says only x1/4 after "
        "8 checks); max-valid-loglik = the released code's max mode on the summed valid log-likelihood, where "
        "a value up to 0.01 % worse than the best counts as an improvement")
    check_points: Literal["even", "thirds-and-end"] = setting(
        "even", "where in an epoch of n steps the checks fall: even = every ceil(n / evals_per_epoch) steps; "
        "thirds-and-end = the released code's: every floor(n / (evals_per_epoch - 1)) steps and again at the "
        "epoch's end (PTB, 4 checks: after 605, 1210, 1815 and 1816 steps; a check falling twice on one step "
        "steps the lr schedule twice)")
    test_weights: Literal["best", "last"] = setting(
        "best", "weights scored on valid and test at the end: best = those of the best valid check (the paper "
        "selects by valid ppl); last = the final weights (the released code)")
    seed: int = setting(1111, "seed of weights, dropout draws and data order", min=0)
    device: Literal["auto", "cuda", "cpu"] = setting("auto", "auto = CUDA, stopping at once if there is none")
    max_steps: int | None = setting(None, "stop after this many steps (status: cut short)", min=1)
    max_seconds: float | None = setting(None, "stop at the last check that fits this wall time (cut short)",
                                        above=0)
    matmul_precision: Literal["highest", "high", "medium"] = setting(
        "highest", "float32 matmuls: highest = fp32, high = TF32, medium = bf16 (torch's names); cuDNN's "
        "convolutions and LSTMs take TF32 unless highest")
    cpu_precision: Literal["auto", "fp32", "bf16"] = setting(
        "auto", "products of a CPU training step: bf16 (fp32 accumulation; scans, normalizers, loss and "
        "weights stay fp32; a CPU with native bf16 only), fp32, or auto = bf16 on a CPU with native bf16 where it measured faster "
        "(pipeline/training/precision.py); evaluation is always fp32; GPU runs ignore it")
    eval_batch_size: int = setting(16, "streams when scoring valid and test", min=1)
    cuda_graph: bool = setting(False, "replay the VLNHMM's training step from CUDA graphs (GPU; not yet run on one)")

    def __post_init__(self):
        super().__post_init__()
        if self.check_points == "thirds-and-end" and self.evals_per_epoch < 2:
            raise ConfigError("check_points thirds-and-end needs evals_per_epoch >= 2 (the released code's num_checks)")


@dataclass(frozen=True)
class KN5Config(Settings):
    """KenLM modified Kneser-Ney n-gram model (Table 1)."""

    order: int = setting(5, "n-gram order", min=2, max=6)


@dataclass(frozen=True)
class FFConfig(Settings):
    """256-d feed-forward 5-gram model (paper A.3)."""

    order: int = setting(5, "n-gram order: the model sees order - 1 previous words", min=2)
    hidden: int = setting(256, "embedding and hidden width", min=1)
    dropout: float = setting(0.3, "dropout on embeddings and activations", min=0, below=1)


@dataclass(frozen=True)
class LSTMConfig(Settings):
    """2 x 256 LSTM (paper A.3)."""

    layers: int = setting(2, "LSTM layers", min=1)
    hidden: int = setting(256, "embedding and hidden width", min=1)
    dropout: float = setting(0.3, "dropout on embeddings, between layers and on outputs", min=0, below=1)


MODELS = {"kn5": KN5Config, "ff": FFConfig, "lstm": LSTMConfig, "vlnhmm": HMMConfig}
# The training loop's defaults that differ by model (paper A.3); the rest are TrainConfig's.
TRAIN_DEFAULTS = {
    "ff": {"batch_size": 128, "bptt": 64, "lr": 1e-3, "epochs": 100},
    "lstm": {"batch_size": 16, "bptt": 32, "lr": 1e-3, "epochs": 50},
    "vlnhmm": {"batch_size": 16, "bptt": 32, "lr": 1e-2, "epochs": 50},
}
SEED_MARK = "@"  # ff@2222: run ff repeated with seed 2222
# Settings that say where, how fast or for how long a run executes, not what it computes (the scan
# backends compute the same numbers to float32 rounding, each tested against the log-space reference; the TVM
# kernels are checked against PyTorch again before use).  A checkpoint resumes across them.
EXECUTION_SETTINGS = frozenset({"device", "max_seconds", "cuda_graph", "backend"})


def _names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def run_setting_names() -> dict[str, set[str]]:
    """Every run setting's name -> the sections of ``defaults:`` it belongs in (train, or the models)."""
    sections = {"train": _names(TrainConfig)} | {model: _names(cls) for model, cls in MODELS.items()}
    return {name: {sec for sec, names in sections.items() if name in names} for name in set().union(*sections.values())}


DEFAULT_RECIPE = "paper-text"


def cluster_file(dataset: str, settings: HMMConfig) -> str:
    """The cluster TSV a brown-constrained run reads (named by where its clusters come from)."""
    M = settings.num_clusters
    if settings.clusters == "brown-clustering":
        return f"data/{dataset}/clusters/brown-{M}.tsv"
    if settings.clusters == "authors":
        return f"data/{dataset}/clusters/authors-{M}.tsv"
    return f"data/{dataset}/clusters/file-{paths_tag(settings.cluster_paths)}-{M}.tsv"


def paths_tag(path: str) -> str:
    """A short name for a user's paths file (its path, hashed)."""
    return hashlib.sha256(path.encode()).hexdigest()[:12]


def run_history(checkpoint: str | Path) -> Path:
    """The log of every training segment of a run, kept beside its checkpoint by the trainer (a job's own
    log is started afresh by snakemake on each resume)."""
    return Path(checkpoint).with_name("train.log")


def run_lock_file(checkpoint: str | Path) -> Path:
    """The lock a trainer holds while it trains a run (``pipeline.training.checkpoints.run_lock``), beside its
    checkpoint; it names the trainer's pid and host, and stays when the trainer ends."""
    return Path(checkpoint).with_name("train.lock")


def lock_holder(checkpoint: str | Path) -> tuple[str, str] | None:
    """(pid, host) of the trainer that last took the run's lock, alive or not; None where it has none.  A lock
    written before the host was recorded gives host ''."""
    try:
        words = run_lock_file(checkpoint).read_text().split()
    except OSError:
        return None
    return (words[0], " ".join(words[1:])) if words else None


@dataclass(frozen=True)
class Run:
    """One experiment: ``settings`` of its model, ``train`` (None for KenLM), the paper ``rows`` it fills,
    and the ``recipe`` it was resolved under (its results folder: ``results/`` for the default recipe,
    ``results/<recipe>/`` for another)."""

    name: str
    dataset: str
    model: str
    settings: Any
    train: TrainConfig | None
    rows: tuple[str, ...] = ()
    recipe: str = DEFAULT_RECIPE

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.name}"

    @property
    def base(self) -> str:
        """The name of the run this one repeats with another seed (``ff`` for ``ff@2222``), else its own."""
        return base_name(self.name)

    @property
    def needs_gpu(self) -> bool:
        return self.train is not None and self.train.device != "cpu"

    @property
    def kernel_target(self) -> str:
        """The TVM target whose kernels this run loads."""
        return target_for(self.train.device if self.train else "cpu")

    @property
    def scan_sizes(self) -> set[int]:
        """Live states per step of the run's HMM scans (empty for other models)."""
        return self.settings.scan_sizes if isinstance(self.settings, HMMConfig) else set()

    @property
    def results(self) -> str:
        """results/, or results/<recipe>/ for a recipe other than the default."""
        return results_dir(self.recipe)

    @property
    def out_dir(self) -> str:
        return f"{self.results}/runs/{self.key}"

    @property
    def filed_as(self) -> str:
        """The run's place in the trees shared by the recipes (the committed reference runs, checkpoints, job
        logs): ``<dataset>/<name>``, under ``<recipe>/`` for a recipe other than the default."""
        return filed_as(self.key, self.recipe)

    @property
    def checkpoint(self) -> str:
        return f"build/checkpoints/{self.filed_as}/ckpt.pt"

    @property
    def job_log(self) -> str:
        """The log of the run's snakemake job (its last training segment; workflow/rules/runs.smk)."""
        return f"logs/runs/{self.filed_as}.log"

    def inputs(self, cuda_arch: str = "sm_90") -> dict[str, Any]:
        """The files the run reads, relative to the working directory (the rule's inputs).

        ``cuda_arch``: whose CUDA libraries a tvm run on a GPU depends on (any built arch loads)."""
        # with the SHA-256 records that the run checks (a data directory made before them is remade)
        inputs: dict[str, Any] = {"data": f"data/{self.dataset}/stats.json", "data_sums": f"data/{self.dataset}/SHA256SUMS"}
        if isinstance(self.settings, HMMConfig) and self.settings.constraint == "brown":
            inputs["clusters"] = cluster_file(self.dataset, self.settings)
            inputs["clusters_sha256"] = inputs["clusters"] + ".sha256"
        if isinstance(self.settings, HMMConfig) and self.settings.backend == "tvm":
            suffix = "" if self.kernel_target == "llvm" else f"_{cuda_arch}"
            kdir = f"build/kernels/{self.kernel_target}"
            inputs["kernels"] = [f"{kdir}/manifest.json"] + [f"{kdir}/scan_n{n}{suffix}.so"
                                                             for n in sorted(self.scan_sizes)]
        return inputs

    def to_dict(self) -> dict:
        return {
            "name": self.name, "dataset": self.dataset, "model": self.model, "rows": list(self.rows),
            "settings": dataclasses.asdict(self.settings),
            "train": dataclasses.asdict(self.train) if self.train else None, "recipe": self.recipe,
        }

    def result_spec(self) -> dict:
        """What the run computes: everything but ``rows`` and ``recipe`` (which only place it)."""
        spec = self.to_dict()
        del spec["rows"], spec["recipe"]
        return spec

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> "Run":
        where = f"run {d.get('dataset')}/{d.get('name')}"
        return cls(d["name"], d["dataset"], d["model"], from_dict(MODELS[d["model"]], d["settings"], where),
                   from_dict(TrainConfig, d["train"], where) if d["train"] else None, tuple(d.get("rows", ())),
                   d.get("recipe", DEFAULT_RECIPE))


def base_name(name: str) -> str:
    """``ff@2222`` -> ``ff``: the run a seed repeat belongs to (a plain name is its own)."""
    return name.split(SEED_MARK)[0]


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    if (not isinstance(value, list) or not value or len(set(value)) != len(value)
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
        raise ConfigError(f"{where}: `seeds` must be a list of distinct integers >= 0, e.g. [1111, 2222, 3333]; "
                          f"got {value!r}")
    return tuple(value)


def results_dir(recipe: str) -> str:
    return "results" if recipe == DEFAULT_RECIPE else f"results/{recipe}"


def filed_as(key: str, recipe: str | None) -> str:
    """``key`` (dataset/name), under ``<recipe>/`` for a recipe other than the default (Run.filed_as)."""
    return key if recipe in (None, DEFAULT_RECIPE) else f"{recipe}/{key}"


def recipe_settings(config: dict, recipe: str | None = None) -> dict:
    """The settings a recipe (``recipes:`` in the config) sets on every run (its ``datasets:`` part aside);
    unknown names are errors."""
    recipe = recipe or config.get("recipe") or DEFAULT_RECIPE
    recipes = config.get("recipes") or {DEFAULT_RECIPE: {}}
    if recipe not in recipes:
        raise ConfigError(f"recipe {recipe!r} is not defined (recipes: {', '.join(recipes)})")
    values = {k: v for k, v in (recipes[recipe] or {}).items() if k != RECIPE_DATASETS}
    unknown = sorted(set(values) - _names(HMMConfig) - _names(TrainConfig))
    if unknown:
        raise ConfigError(f"recipes.{recipe}: {', '.join(unknown)} is not a VLNHMM or training setting")
    return values


RECIPE_DATASETS = "datasets"  # recipes.<recipe>.datasets.<dataset>.<model>: settings for those runs only


def recipe_for(config: dict, recipe: str, dataset: str, model: str) -> dict:
    """What recipe ``recipe`` sets on a run of ``model`` on ``dataset``: its settings for every run (those the
    model has), then its ``datasets.<dataset>.<model>`` ones (every one a setting of the model)."""
    general = recipe_settings(config, recipe)
    model_keys = _names(MODELS[model]) | (_names(TrainConfig) if model in TRAIN_DEFAULTS else set())
    specific = ((((config.get("recipes") or {}).get(recipe) or {}).get(RECIPE_DATASETS) or {}).get(dataset) or {})
    specific = specific.get(model) or {}
    unknown = sorted(set(specific) - model_keys)
    if unknown:
        raise ConfigError(f"recipes.{recipe}.{RECIPE_DATASETS}.{dataset}.{model}: {', '.join(unknown)} is not a "
                          f"setting of model {model}")
    return {k: v for k, v in general.items() if k in model_keys} | specific


def recipe_overrides(config: dict) -> list[str]:
    """Every setting of a ``runs:`` entry that differs from what the recipe in use sets on that run: the run's
    own setting is the one used (a recipe sits over ``defaults``, under a run's own settings)."""
    recipe = config.get("recipe") or DEFAULT_RECIPE
    notes = []
    for entry in config["runs"]:
        if entry.get("model") not in MODELS:
            continue
        values = recipe_for(config, recipe, entry["dataset"], entry["model"])
        notes += [f"run {entry['dataset']}/{entry['name']}: its own {k}: {entry[k]!r} is used, not recipe "
                  f"{recipe}'s {v!r}" for k, v in values.items() if k in entry and entry[k] != v]
    return notes


_PAPER_ROWS: dict[str, set[str]] = {}


def paper_rows() -> dict[str, set[str]]:
    """The rows a run may fill: each table's row keys (config/paper.yaml), each figure, ``fidelity``."""
    if not _PAPER_ROWS:
        import yaml
        paper = yaml.safe_load((Path(__file__).resolve().parents[1] / "config/paper.yaml").read_text())
        for item, body in paper.items():
            if item.startswith("table"):
                rows = body["rows"]
                entries = [r for part in rows.values() for r in part] if isinstance(rows, dict) else rows
                _PAPER_ROWS[item] = {r["key"] for r in entries if not r.get("cited")}
            elif item.startswith("fig"):
                _PAPER_ROWS[item] = set()
        _PAPER_ROWS["fidelity"] = set()
    return _PAPER_ROWS


def check_rows(rows: tuple[str, ...], where: str) -> None:
    """Raise ConfigError for a row that names no table row or figure of the paper (it would fill nothing)."""
    known = paper_rows()
    for row in rows:
        item, _, key = str(row).partition("/")
        if item not in known or bool(key) != bool(known[item]) or (key and key not in known[item]):
            choices = (f"{item}/KEY with KEY one of {', '.join(sorted(known[item]))}" if known.get(item)
                       else f"one of {', '.join(f'{i}/KEY' if k else i for i, k in known.items())}")
            raise ConfigError(f"{where}: rows: {row!r} is no row of the paper's tables or figures ({choices}; "
                              "config/paper.yaml)")


def resolve_run(entry: dict, defaults: dict | None = None, recipe: str = DEFAULT_RECIPE,
                recipe_values: dict | None = None) -> Run:
    """One ``runs:`` entry with its defaults applied, as a typed Run (``seeds``: see :func:`resolve_seeded`)."""
    return resolve_seeded(entry, defaults, recipe, recipe_values)[0]


def resolve_seeded(entry: dict, defaults: dict | None = None, recipe: str = DEFAULT_RECIPE,
                   recipe_values: dict | None = None) -> list[Run]:
    """One ``runs:`` entry as typed Runs: the model's defaults, then ``defaults.train`` and
    ``defaults.<model>``, then the recipe's settings (those the model has), then the entry's own;
    the run, then one repeat per further seed of ``seeds``.

    ``seeds: [a, b, c]`` (the entry's, else ``defaults.<model>``'s, else ``defaults.train``'s) trains
    the run under its own name with seed a, and as ``<name>@b`` and ``<name>@c`` with seeds b and c:
    each repeat is a run of its own (job, target, checkpoint, reference), with the same rows."""
    entry, defaults = dict(entry), defaults or {}
    name, dataset, model = entry.pop("name"), entry.pop("dataset"), entry.pop("model")
    rows = tuple(entry.pop("rows", ()))
    where = f"run {dataset}/{name}"
    check_rows(rows, where)
    if model not in MODELS:
        raise ConfigError(f"{where}: unknown model {model!r} (models: {', '.join(MODELS)})")
    if SEED_MARK in name:
        raise ConfigError(f"{where}: `{SEED_MARK}` in a name is kept for seed repeats (use `seeds:`)")
    model_cls = MODELS[model]
    trained = model in TRAIN_DEFAULTS
    model_keys, train_keys = _names(model_cls), _names(TrainConfig) if trained else set()
    merged = dict(TRAIN_DEFAULTS.get(model, {}))
    seeds: tuple[int, ...] = ()
    from_recipe = {k: v for k, v in (recipe_values or {}).items() if k in model_keys | train_keys}
    for scope, values in (("defaults.train", defaults.get("train") if trained else None),
                          (f"defaults.{model}", defaults.get(model)), (f"recipes.{recipe}", from_recipe),
                          (where, entry)):
        values = dict(values or {})
        if "seeds" in values:
            if not trained:
                raise ConfigError(f"{scope}: `seeds` repeats a trained run; model {model} has no seed")
            seeds = _seeds(values.pop("seeds"), scope)
        unknown = sorted(set(values or {}) - model_keys - train_keys)
        if unknown:
            raise ConfigError(f"{scope}: {', '.join(f'`{k}`' for k in unknown)} is not a setting of model {model} "
                              f"(its settings: {', '.join(sorted(model_keys | train_keys))})")
        merged.update(values or {})
    settings = from_dict(model_cls, {k: v for k, v in merged.items() if k in model_keys}, where)
    train = from_dict(TrainConfig, {k: v for k, v in merged.items() if k in train_keys}, where) if trained else None
    if not seeds:
        return [Run(name, dataset, model, settings, train, rows, recipe)]
    return [Run(name if i == 0 else f"{name}{SEED_MARK}{seed}", dataset, model, settings,
                dataclasses.replace(train, seed=seed), rows, recipe) for i, seed in enumerate(seeds)]


def resolve_runs(config: dict, extra: list[dict] = ()) -> list[Run]:
    """Every run of the config (and ``extra`` entries) under its recipe, seed repeats included; names
    unique per dataset and telling the model apart."""
    recipe = config.get("recipe") or DEFAULT_RECIPE
    recipe_settings(config, recipe)  # an unknown recipe or setting stops here, even without runs
    for section, values in (config.get("defaults") or {}).items():  # each value, even one overridden later
        for cls in ((TrainConfig,) if section == "train" else (MODELS[section], TrainConfig)):
            check_values(cls, values or {}, f"defaults.{section}")
    runs = [run for e in [*config["runs"], *extra]
            for run in resolve_seeded(e, config.get("defaults"), recipe,
                                      recipe_for(config, recipe, e["dataset"], e["model"])
                                      if e.get("model") in MODELS else {})]
    on_cpu = set(config.get("cpu_runs") or ())
    unknown = on_cpu - {base_name(run.key) for run in runs}
    if unknown:
        raise ConfigError(f"cpu_runs: no run {', '.join(sorted(unknown))} in `runs:` (write dataset/name, e.g. ptb/ff)")
    runs = [dataclasses.replace(run, train=dataclasses.replace(run.train, device="cpu"))
            if base_name(run.key) in on_cpu and run.train is not None else run for run in runs]
    seen: set[str] = set()
    model_of: dict[str, str] = {}
    for run in runs:
        if run.dataset not in config["datasets"]:
            raise ConfigError(f"run {run.key}: unknown dataset {run.dataset!r} (datasets: {', '.join(config['datasets'])})")
        if run.key in seen:
            raise ConfigError(f"run {run.key} is defined twice")
        if model_of.setdefault(run.name, run.model) != run.model:
            raise ConfigError(f"run name {run.name!r} is used by models {model_of[run.name]} and {run.model}; "
                              "a name must tell the model (the workflow routes a name to one rule)")
        if run.model == "vlnhmm" and run.settings.constraint == "brown" and run.settings.clusters == "authors":
            try:
                authors_source(run.dataset, run.settings.num_clusters)
            except ClusterFileError as err:
                raise ConfigError(f"run {run.key} (clusters: authors): {err}") from None
        seen.add(run.key)
    return runs


def name_pattern(runs: list[Run], models: set[str]) -> str:
    """A regex matching exactly the names of the runs of these models (a rule's wildcard constraint)."""
    names = sorted({r.name for r in runs if r.model in models})
    return "|".join(map(re.escape, names)) or "(?!)"


def kernel_states(runs: list[Run], extra: list[int] = ()) -> list[int]:
    """Every live-state count any run's scans need (plus ``extra``, e.g. benchmark sizes)."""
    return sorted(set(extra).union(*(run.scan_sizes for run in runs)))


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


def settings_doc() -> str:
    """config/README.md: every run setting, generated from the dataclasses."""
    head = ("# Run settings\n\nGenerated by `python -m pipeline.config --doc > config/README.md` from the "
            "dataclasses that declare them (a test keeps it current).  A run in `config/config.yaml` may set any "
            "setting of its model and, for trained models, of the training loop; `defaults.<model>` and "
            "`defaults.train` set them for every run.  Defaults are the paper's text; where the text is silent they "
            "follow the released code's run command (harvardnlp/hmm-lm at f52e860, `scripts/hmm_commands.sh`): so "
            "`eos_reset` defaults to `train-in-window`, the released semantics.  `--config recipe=released-code` "
            "sets every setting where the text and the released code differ to the released value (`recipes:` in "
            "config/config.yaml; outputs under results/released-code/), on WikiText-2 too: the released `run_w2` "
            "command's lr 0.01 and its cluster files `clusters/w2flm-M/paths` (M = 32, 64, 128).\n\n"
            "Precedence, lowest first: a setting's default below, `defaults.train`, `defaults.<model>`, the recipe "
            "(its settings for every run that has them, then its `datasets.<dataset>.<model>` settings for those "
            "runs only), a run's own settings.  A run's own setting that differs from its recipe's is used, and "
            "snakemake says so on stderr (`NOTE: run <dataset>/<name>: its own ... is used, not recipe ...'s ...`); "
            "settings where the recipes differ for one dataset (WikiText-2's lr) therefore sit in the recipes, not "
            "in the runs.\n\n"
            "Training defaults that differ by model: "
            + "; ".join(f"{m}: " + ", ".join(f"{k} {v:g}" for k, v in d.items()) for m, d in TRAIN_DEFAULTS.items())
            + ".\n\n"
            "Repeats over seeds: `seeds: [a, b, ...]` (a list of distinct integers >= 0) in a trained run, in "
            "`defaults.<model>` or in `defaults.train` trains the run with seed a under its own name and once more "
            "per further seed as `<name>@<seed>` (each its own job, target, checkpoint and reference; the same "
            "rows).  Table rows then show the mean, standard deviation and n of the seeds.\n\n")
    return head + "\n".join(settings_table(cls, title) for cls, title in (
        (HMMConfig, "vlnhmm"), (TrainConfig, "training loop (ff, lstm, vlnhmm)"), (FFConfig, "ff"),
        (LSTMConfig, "lstm"), (KN5Config, "kn5")))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="The run settings (see the module docstring).")
    ap.add_argument("--doc", action="store_true", help="print config/README.md")
    a = ap.parse_args(argv)
    if a.doc:
        print(settings_doc(), end="")


if __name__ == "__main__":
    main()
