"""The config snakemake would use for a profile and its overlays, read outside snakemake (the bundle, the
importer, ``./repro status``, benchmarks): one place for the Snakefile's precedence rules."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


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
        if not entries:
            entries = [str(e) for e in pconf.get("config") or []]
    overwrite: dict = {}
    for f in files:
        update_config(overwrite, _yaml(f))
    update_config(overwrite, parse_config(entries))
    config = _yaml(ROOT / "config/config.yaml")
    update_config(config, overwrite)
    if config.get("profile"):
        overlay = (ROOT / f"config/{config['profile']}.yaml").resolve()
        if overlay not in files:
            update_config(config, _yaml(overlay))
            update_config(config, overwrite)
    from snakemake.utils import validate

    validate(config, str(ROOT / "config/schema.yaml"))
    return config


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
