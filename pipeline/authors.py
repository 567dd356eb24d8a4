"""The authors' Brown cluster files (harvardnlp/hmm-lm at a pinned commit): where each is and its sha256.

The released code reads ``clusters/lm-<M>/paths`` for PTB and ``clusters/w2flm-<M>/paths`` for WikiText-2
(its ``w2lm-<M>`` files are read by no released command).  The repository has no licence: its files are
never copied here, only their hashes.  Nothing heavy is imported: the config checks a run's M with it.
"""
from __future__ import annotations

AUTHORS_COMMIT = "f52e860007e60d740b2212776a199ceb35d571ca"
AUTHORS_URL = "https://raw.githubusercontent.com/harvardnlp/hmm-lm/{commit}/clusters/{name}/paths"
AUTHORS_DIR = {"ptb": "lm", "wt2": "w2flm"}  # clusters/<dir>-<M>/paths in the authors' repository
# sha256 of clusters/<dir>-<M>/paths at AUTHORS_COMMIT
AUTHORS_SHA256 = {
    "ptb": {4: "717ffc51a1879ad62829c84ac3e959426bed0dfa42f53d7d46e7fa93aad6a5ae",
            8: "818c977550a6ec780d9bcead1f441ba6c10cc5b18022305715b5ef9f1072bce1",
            9: "a7d31403b7cec1a062d2f53778616289ce190937fc283cdd558f21e485b6f39c",
            10: "ec70779063e75dec787b8710e90fabb1138657c68422b98f8cf884a76a5fad92",
            16: "260f0bc5e01c3012cd2b663b3cc32e44e39d4c763e61b9deb60a1f28b654dd26",
            32: "fdddbb23e552aa17ca054df62767cffbc3fa39685d8c33911341f40b2a046a1d",
            64: "9960b3d887bb7a541cf47c0276c5af392fd1567691630a89f20d668df9e0f37a",
            128: "095db0aa4cdd1822036ca01a6ed65452420d322c9c79f4da8109ab562c3c26a8",
            256: "78994aff1cee3e45bba75d35cda50654c223b794659364fa87db2569dbfa2ca5"},
    "wt2": {32: "efa8ba4f2bb5ae7d7ab584d954182267b5f8c90310fbd5cb67c7ca7436b03e8d",
            64: "2c058af4ae183d5b38ed358b9de9ee91c23f8743f7b94b3c0be5ae880dd5d17a",
            128: "315f41820a648d6647f44a76616b0f25d660fe87a178ebf05c9876adeac1b865"},
}


class ClusterFileError(ValueError):
    """A cluster file is missing, truncated, malformed or not the pinned one."""


def authors_source(dataset: str, num_clusters: int) -> tuple[str, str]:
    """(URL, sha256) of the authors' ``paths`` file for ``dataset`` and M."""
    pinned = AUTHORS_SHA256.get(dataset, {})
    if num_clusters not in pinned:
        have = ", ".join(map(str, sorted(pinned))) or "none"
        where = f"clusters/{AUTHORS_DIR[dataset]}-M/paths" if dataset in AUTHORS_DIR else "no paths file"
        raise ClusterFileError(f"the authors' repository has no paths file for {dataset} with {num_clusters} "
                               f"clusters: the released code reads {where} for {dataset}, pinned for M = {have}; "
                               "set num_clusters to one of these, or clusters: brown-clustering (our own run)")
    name = f"{AUTHORS_DIR[dataset]}-{num_clusters}"
    return AUTHORS_URL.format(commit=AUTHORS_COMMIT, name=name), pinned[num_clusters]
