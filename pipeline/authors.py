"""The authors' released Brown clusters (harvardnlp/hmm-lm), pinned: where each file is and its sha256.

Shared: the data stage fetches and checks the files (pipeline.data.clusters), the fidelity table names
the file a run read by what it is (pipeline.reporting.fidelity).  The repository has no licence: its
files are never copied here.
"""

AUTHORS_COMMIT = "f52e860007e60d740b2212776a199ceb35d571ca"
AUTHORS_URL = "https://raw.githubusercontent.com/harvardnlp/hmm-lm/{commit}/clusters/{name}/paths"
AUTHORS_DIR = {"ptb": "lm", "wt2": "w2lm"}  # clusters/<dir>-<M>/paths in the authors' repository
# sha256 of clusters/<dir>-<M>/paths at AUTHORS_COMMIT (the repository has no licence: never copied here)
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
    "wt2": {32: "c13dc78193a36f84b17bb5318e0a0bb5263725ea9a8487c78ba9ce53db5e2660",
            64: "e854269854c8a26917029e64aa10dbc196690fe45310b99da47a0484536c6a14",
            128: "b68757b97ad282cfc63146170da8ff2059627c73948a686e7bf7313a3d3438dd",
            256: "87872ce56d92c9a8ee02318f5b8a68bf29d998fe3cd3a1e08ebefb38196a682d"},
}
