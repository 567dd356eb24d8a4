"""``python3 -m pipeline.node``: the GPU node's job (pipeline.node.job)."""
from pipeline.node.job import main

raise SystemExit(main())
