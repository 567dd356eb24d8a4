"""Put snakemake's targets first, so that a command line works whatever its order.

snakemake 9 reads every word after a many-valued option (``--resources``, ``--config``, ``--forcerun``,
...) as one of its values, so ``snakemake --cores 8 --resources gpu=1 results/table1.csv`` takes the
target for a resource and stops.  ``./repro run`` passes its arguments through this module first:
each many-valued option keeps only the words that fit it (``NAME=VALUE`` for ``--resources`` and
``--config``, a config file for ``--configfile``, a rule name for ``--forcerun``/``--until``/...,
one of the allowed choices where there are choices); every other free word is a target, and the
targets go first.  The options themselves come from snakemake's own parser (plugins included), so
an option that takes one value keeps it as argparse would.

    python -m pipeline.snakemake_args [ARGS...]   # prints the reordered ARGS, NUL-separated
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


def _fits(names, word, choices, rules):
    """Whether ``word`` is a value of the many-valued option spelt ``names`` (else it is a target)."""
    if choices:
        return word in choices
    if names & ASSIGNMENTS:
        return "=" in word
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


def main(argv):
    sys.stdout.write("".join(f"{arg}\0" for arg in targets_first(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
