"""Put snakemake's targets first, so that a command line works whatever its order.

snakemake 9 reads every word after a many-valued option (``--resources``, ``--config``, ``--forcerun``,
...) as one of its values, so ``snakemake --cores 8 --resources gpu=1 results/table1.csv`` takes the
target for a resource and stops with a traceback.  The project's ``snakemake`` command (the
entry point ``./repro setup`` writes into ``.venv/bin``, which ``./repro run`` calls too) passes its
arguments through :func:`targets_first`, then calls snakemake's own ``main``: each many-valued
option keeps only the words that fit it (``NAME=VALUE`` for ``--resources`` and ``--config``, a
config file for ``--configfile``, a rule name for ``--forcerun``/``--until``/..., one of the allowed
choices where there are choices); every other free word is a target, and the targets go first.
The options themselves come from snakemake's own parser (plugins included), so an option that
takes one value keeps it as argparse would.  A word without ``=`` after ``--resources``,
``--config``, ... that is no target (not a rule, no ``/`` or ``.``: ``--resources gpu``) is a
malformed value: it stops with snakemake's usage and the option named, not a traceback.

A profile's ``config:`` entries (``profile=cpu`` in profiles/cpu) are kept under a command line's
``--config`` (:func:`keep_profile_config`): snakemake replaces the profile's list by the command line's, and
with ``--configfile`` replacing the profile's ``configfiles`` too, nothing would say which profile runs
(``--profile profiles/cpu --configfile my.yaml --config mirror=DIR`` planned the CPU runs as GPU runs).

    python -m pipeline.snakemake_args --install BIN   # writes BIN/snakemake (./repro setup does)
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# many-valued options by the shape of their values
ASSIGNMENTS = {"--resources", "--set-threads", "--set-resources", "--set-scatter", "--set-resource-scopes",
               "--default-resources", "--config", "--consider-ancient", "--groups", "--group-components",
               "--target-jobs"}
CONFIG_FILES = {"--configfile"}
RULES = {"--cache", "--preemptible-rules", "--forcerun", "--prioritize", "--until", "--omit-from",
         "--allowed-rules"}
IDENTIFIERS = {"--envvars"}
OUTPUT_DIRS = {"results", "build", "data", "logs"}  # a .json there is a target, not a config file


def rule_names(root=ROOT):
    """The workflow's rule names (``rule NAME:`` in the Snakefile and workflow/rules/*.smk)."""
    names = set()
    for path in [root / "Snakefile", *sorted((root / "workflow/rules").glob("*.smk"))]:
        names.update(re.findall(r"^rule\s+(\w+)\s*:", path.read_text(), flags=re.M))
    return names


def _options():
    """Option string -> (all its spellings, nargs, choices, takes a value) from snakemake's parser."""
    from snakemake.cli import get_argument_parser

    table = {}
    for action in get_argument_parser()._actions:
        if not action.option_strings:
            continue
        names = frozenset(action.option_strings)
        takes = action.nargs != 0  # flags (store_true, count, help, ...) have nargs 0
        for opt in action.option_strings:
            table[opt] = (names, action.nargs, action.choices, takes)
    return table


def looks_like_target(word, rules):
    """A rule name or a file (a path or a name with an extension)."""
    return word in rules or "/" in word or "." in word


def _fits(names, word, choices, rules):
    """Whether ``word`` is a value of the many-valued option spelt ``names`` (else it is a target)."""
    if choices:
        return word in choices
    if names & ASSIGNMENTS:  # a word without `=` is a malformed value unless it is a target
        return "=" in word or not looks_like_target(word, rules)
    if names & CONFIG_FILES:
        return word.endswith((".yaml", ".yml", ".json")) and Path(word).parts[0] not in OUTPUT_DIRS
    if names & RULES:
        return word in rules
    if names & IDENTIFIERS:
        return re.fullmatch(r"[A-Za-z_]\w*", word) is not None and word not in rules
    return True  # unknown shape: as argparse would


def targets_first(argv, rules=None, options=None):
    """``argv`` with every target moved to the front (before all options); nothing else changes."""
    rules = rule_names() if rules is None else rules
    options = _options() if options is None else options
    targets, rest = [], []
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "--":
            targets.extend(argv[i:])
            break
        if not word.startswith("-") or word == "-":
            targets.append(word)
            continue
        rest.append(word)
        name, _, inline = word.partition("=")
        if name not in options:
            continue  # combined short flags (-np), -j8, or an unknown option: no separate value
        names, nargs, choices, takes = options[name]
        if not takes:
            continue
        if nargs in ("*", "+"):
            taken = int(bool(inline))
            while i < len(argv) and not argv[i].startswith("-"):
                # a rule option with no value yet takes any first word (a lone `--forcerun FILE`)
                lone = not taken and not choices and not names & ASSIGNMENTS
                if not lone and not _fits(names, argv[i], choices, rules):
                    break
                rest.append(argv[i])
                taken += 1
                i += 1
        elif inline:
            continue
        elif nargs == "?":
            if i < len(argv) and not argv[i].startswith("-"):
                rest.append(argv[i])
                i += 1
        else:
            count = nargs if isinstance(nargs, int) else 1
            rest.extend(argv[i:i + count])
            i += count
    return targets + rest


def malformed(argv, options=None):
    """The first ``(option, word)`` where a ``NAME=VALUE`` option (``--resources``, ``--config``, ...)
    was given a word without ``=``, or None."""
    options = _options() if options is None else options
    option = None
    for word in argv:
        if word == "--":
            return None
        if word.startswith("-"):
            name, _, inline = word.partition("=")
            known = options.get(name)
            option = name if known and known[0] & ASSIGNMENTS and known[1] in ("*", "+") and not inline else None
        elif option and "=" not in word:
            return option, word
    return None


def _profile_dir(args):
    """The ``--profile`` of ``args`` (else ``$SNAKEMAKE_PROFILE``) as a directory, or None."""
    import os

    name = os.environ.get("SNAKEMAKE_PROFILE")
    for i, word in enumerate(args):
        if word == "--profile" and i + 1 < len(args):
            name = args[i + 1]
        elif word.startswith("--profile="):
            name = word.split("=", 1)[1]
    if not name or not Path(name).is_dir():
        return None  # a profile by name in snakemake's global profile folders: left to snakemake
    return Path(name)


def keep_profile_config(args):
    """``args`` with the profile's ``config:`` entries put first in a command line's ``--config`` (the
    command line's own values of the same keys still win: later entries override earlier ones)."""
    from hmm.config import ConfigError
    from pipeline.profiles import _yaml, profile_entries

    at = next((i for i, word in enumerate(args) if word == "--config" or word.startswith("--config=")), None)
    profile = _profile_dir(args) if at is not None else None
    if profile is None or not (profile / "config.yaml").is_file():
        return args
    try:
        entries = profile_entries(_yaml(profile / "config.yaml"))
    except ConfigError:
        return args  # snakemake reports a malformed profile itself
    inline = args[at].partition("=")[2]  # --config=KEY=VALUE
    return [*args[:at], "--config", *entries, *([inline] if inline else []), *args[at + 1:]]


def snakemake(argv=None):
    """snakemake's own ``main`` on ``argv`` (default: the command line) with the targets put first."""
    from snakemake.cli import get_argument_parser, main

    argv = sys.argv[1:] if argv is None else argv
    options = _options()
    args = targets_first(argv, options=options)
    bad = malformed(args, options)
    if bad:
        get_argument_parser().error(f"argument {bad[0]}: {bad[1]!r} is not NAME=VALUE (a target goes "
                                    f"first, or after --)")
    problem = unreadable_configfile(args)
    if problem:
        sys.exit(f"snakemake: error: argument --configfile: {problem}")
    problem = bad_config_entry(args)
    if problem:
        sys.exit(f"snakemake: error: {problem}")
    return main(keep_profile_config(args))


def bad_config_entry(args):
    """The first ``--config`` entry of ``args`` that snakemake would refuse with a traceback, said in one line."""
    from pipeline.profiles import config_entry_problem

    inside = False
    for word in args:
        if word == "--":
            return None
        if word.startswith("-"):
            inside = word == "--config" or word.startswith("--config=")
            word = word.partition("=")[2] if word.startswith("--config=") else ""
        if inside and word and (problem := config_entry_problem(word)):
            return problem
    return None


def unreadable_configfile(args):
    """Why a ``--configfile`` of ``args`` cannot be used (missing, not YAML, not a mapping), else None: said in
    one line before snakemake starts (snakemake's own report is a traceback)."""
    from hmm.config import ConfigError
    from pipeline.profiles import _yaml

    files, inside = [], False
    for word in args:
        if word in CONFIG_FILES or word == "--configfiles":
            inside = True
        elif word.startswith("--configfile=") or word.startswith("--configfiles="):
            files.append(word.split("=", 1)[1])
        elif word.startswith("-"):
            inside = False
        elif inside:
            files.append(word)
    for name in files:
        try:
            _yaml(Path(name))
        except ConfigError as err:
            return str(err)
    return None


ENTRY_POINT = """#!{python}
# snakemake with its targets anywhere on the line: pipeline/snakemake_args.py (written by ./repro setup)
import sys
from pipeline.snakemake_args import snakemake
if __name__ == "__main__":
    sys.argv[0] = sys.argv[0].removesuffix(".exe")
    sys.exit(snakemake())
"""


def install(bin_dir):
    """Write ``bin_dir/snakemake`` (this module's entry point) unless it is there; True if written."""
    path = Path(bin_dir) / "snakemake"
    text = ENTRY_POINT.format(python=Path(bin_dir).absolute() / "python")
    if path.is_file() and path.read_text() == text:
        return False
    tmp = path.with_name(".snakemake.tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    tmp.replace(path)  # replaces pip's console script (a reinstall of snakemake writes that one back)
    return True


if __name__ == "__main__":
    if sys.argv[1:2] != ["--install"] or len(sys.argv) != 3:
        sys.exit("usage: python -m pipeline.snakemake_args --install BIN")
    if install(sys.argv[2]):
        print(f"wrote {sys.argv[2]}/snakemake: snakemake with its targets anywhere on the line")
