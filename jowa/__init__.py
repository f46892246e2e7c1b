"""jowa-repro: the JOWA reproduction workflow as a Python package (one `jowa` command per stage)."""

__version__ = "0.1.0"
