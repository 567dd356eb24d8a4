"""The config snakemake would use for a profile and its overlays, read outside snakemake (the bundle, the
importer, ``./repro status``, benchmarks): one place for the Snakefile's precedence rules."""
from __future__ import annotations

import re
from pathlib import Path

from hmm.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIG_KEY = re.compile(r"[a-zA-Z_][\w-]*\w$")  # what snakemake takes as a --config KEY


def config_entry_problem(entry: str) -> str | None:
    """Why snakemake would refuse this ``--config`` entry (with a traceback), said in one line; None if fine."""
    key, eq, _ = entry.partition("=")
    if not eq:
        return f"--config {entry!r} is not KEY=VALUE"
    if not CONFIG_KEY.match(key):
        return (f"--config {entry!r}: {key!r} is not a top-level config key (a name of letters, digits, _ and -); "
                "a nested setting goes in a --configfile, e.g. `defaults: {train: {device: cpu}}`")
    return None


def _yaml(path: Path) -> dict:
    """A config file's mapping; a missing or malformed file is a ConfigError naming it (and the line)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, not a {type(data).__name__}")
    return data


def check_schema(config: dict, schema_path: Path | str = None) -> None:
    """Raise ConfigError with one line per problem (the key's path, what is wrong, a near key for a typo),
    not jsonschema's dump of the whole schema and config."""
    import difflib

    import jsonschema
    import yaml

    from pipeline.config import run_setting_names

    run_settings = run_setting_names()
    schema = yaml.safe_load(Path(schema_path or ROOT / "config/schema.yaml").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    lines = []
    for err in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        where = "/".join(map(str, err.absolute_path)) or "(top level)"
        if err.validator == "additionalProperties":
            allowed = list((err.schema.get("properties") or {}))
            for key in sorted(set(err.instance) - set(allowed)):
                near = difflib.get_close_matches(key, allowed, n=1)
                sections = sorted(run_settings.get(key, ())) if not err.absolute_path else []
                lines.append(f"{'/'.join([*map(str, err.absolute_path), key])}: unknown key" + (
                    f" (a run setting: it goes under `defaults: {{{sections[0]}: {{{key}: ...}}}}` in a --configfile, "
                    f"or in a run's entry)" if sections else
                    f" (did you mean `{near[0]}`?)" if near else f" (keys here: {', '.join(allowed)})"))
        else:
            lines.append(f"{where}: {err.message}")
    if lines:
        more = f"\n  ... and {len(lines) - 8} more" if len(lines) > 8 else ""
        raise ConfigError("the config does not fit config/schema.yaml (every key: config/config.yaml):\n  "
                          + "\n  ".join(lines[:8]) + more)


def _profile_file(profile_dir: Path, value: str) -> Path:
    """A path named in a profile: relative to the profile if it exists there (as snakemake), else to the root."""
    return profile_dir / value if (profile_dir / value).exists() else ROOT / value


def load_config(profile: str | None = None, configfiles: list[str] | None = None,
                overrides: list[str] | None = None) -> dict:
    """The config snakemake would use with these --profile / --configfile / --config arguments.

    As the Snakefile: config.yaml, then the overwrite config (the configfiles in order, then the
    --config entries; given on the command line they replace the profile's own); a profile overlay
    config/<profile>.yaml named by the config's ``profile`` and not among the configfiles goes
    between them.  Mappings merge key by key, anything else is replaced (snakemake's update_config).
    """
    from snakemake.cli import parse_config
    from snakemake.utils import update_config

    files, entries = [Path(f).resolve() for f in configfiles or []], list(overrides or [])
    if profile:
        pdir = resolve_profile(profile)
        pconf = _yaml(pdir / "config.yaml")
        if not files:
            files = [_profile_file(pdir, f).resolve() for f in pconf.get("configfiles") or []]
        entries = profile_entries(pconf) + entries  # as the project's snakemake does (snakemake_args)
    overwrite: dict = {}
    for f in files:
        update_config(overwrite, _yaml(f))
    for entry in entries:
        if problem := config_entry_problem(entry):
            raise ConfigError(problem)
    update_config(overwrite, parse_config(entries))
    config = _yaml(ROOT / "config/config.yaml")
    update_config(config, overwrite)
    if config.get("profile"):
        overlay = (ROOT / f"config/{config['profile']}.yaml").resolve()
        if overlay not in files:
            update_config(config, _yaml(overlay))
            update_config(config, overwrite)
    check_schema(config)
    return config


def profile_entries(settings: dict) -> list[str]:
    """A profile's ``config:`` (its config.yaml's mapping ``settings``) as KEY=VALUE words: a list or a mapping.
    They go first in a command line's ``--config``, whose own entries then win key by key
    (pipeline.snakemake_args.keep_profile_config; snakemake alone would drop them)."""
    entries = settings.get("config") or []
    return [f"{k}={v}" for k, v in entries.items()] if isinstance(entries, dict) else [str(e) for e in entries]


def resolve_profile(profile: str) -> Path:
    for cand in (Path(profile), ROOT / profile, ROOT / "profiles" / profile):
        if (cand / "config.yaml").is_file():
            return cand.resolve()
    raise SystemExit(f"no profile {profile!r} (a directory with config.yaml, e.g. profiles/tiny)")


def workdir_of(profile: str | None, directory: str | None) -> Path:
    """Where snakemake writes (--directory, else the profile's `directory:`, else the root)."""
    if directory:
        return (ROOT / directory).resolve()
    if profile:
        d = _yaml(resolve_profile(profile) / "config.yaml").get("directory")
        if d:
            return (ROOT / d).resolve()
    return ROOT
