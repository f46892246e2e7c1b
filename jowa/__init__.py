"""jowa-repro: the JOWA reproduction workflow as a Python package (one `jowa` command per stage).

Kept free of code on purpose: every workflow job runs it, so it is a code input of every rule
(`jowa.jobs.code_inputs`); the version lives in the package metadata (`jowa --version`).
"""
