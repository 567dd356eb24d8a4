"""The offline GPU node: the bundle made on the CPU machine (bundle), the node job that runs it
(``python3 -m pipeline.node``: job), its environment record and kernel check (check), and the import of what
came back (importer)."""
