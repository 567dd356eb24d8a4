"""A Python that sees only the repository, a GPU bundle, torch and numpy (tests/test_bundle.py).

Put this folder first on PYTHONPATH: every Python started with that environment (the node and
each child it spawns) imports this module at start-up, which

* drops from sys.path every site-packages / dist-packages folder and every entry that is neither
  the standard library nor under one of the roots in $NODE_SANDBOX_PATHS (the repository, the
  bundle, a folder of links to torch, numpy and their own dependencies): the environment's
  packages -- full TVM, snakemake, yaml, pandas, matplotlib, tqdm -- are gone;
* refuses to import any top-level module that is not standard library or named in
  $NODE_SANDBOX_NAMES (as absent, or with ModuleNotFoundError where another finder would still
  produce it), appending ``refused <name>`` to $NODE_SANDBOX_LOG;
* at exit appends ``loaded <names>``: the non-standard top-level modules the process imported.
"""
import atexit
import os
import sys
from pathlib import Path

_ROOTS = [Path(p).resolve() for p in os.environ.get("NODE_SANDBOX_PATHS", "").split(os.pathsep) if p]
_NAMES = set(filter(None, os.environ.get("NODE_SANDBOX_NAMES", "").split(",")))
_LOG = os.environ.get("NODE_SANDBOX_LOG")
_BASE = Path(sys.base_prefix).resolve()


def _log(line: str) -> None:
    if _LOG:
        with open(_LOG, "a") as f:
            f.write(f"{line} pid={os.getpid()} argv={' '.join(sys.argv[:3])}\n")


def _keep(entry: str) -> bool:
    path = Path(entry or os.getcwd()).resolve()
    if {"site-packages", "dist-packages"} & set(path.parts):
        return False  # also a virtual environment inside the repository
    return any(path == r or r in path.parents for r in _ROOTS + [_BASE])


def _allowed(top: str) -> bool:
    return (top in _NAMES or top in sys.stdlib_module_names or top in sys.builtin_module_names
            or top.startswith("_sysconfigdata"))  # the standard library's, named per platform


class _Refuse:
    """A meta-path finder that stops imports of top-level modules outside the allow-list."""

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if path is not None or _allowed(top):
            return None
        _log(f"refused {top}")
        # Not found (None) as on the node, so probes such as importlib.util.find_spec behave as
        # there; a module some other finder would still produce is refused outright.
        for finder in sys.meta_path:
            if finder is not self and getattr(finder, "find_spec", None) and finder.find_spec(name, path, target):
                raise ModuleNotFoundError(f"node sandbox: {name} is not available on the node", name=name)
        return None


def _audit() -> None:
    loaded = sorted(m for m in {m.partition(".")[0] for m in list(sys.modules)} if not _allowed(m) or m in _NAMES)
    _log("loaded " + ",".join(loaded))


if _ROOTS:
    sys.path[:] = [p for p in sys.path if _keep(p)]
    sys.meta_path.insert(0, _Refuse())
    atexit.register(_audit)
