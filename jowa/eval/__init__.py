"""The evaluation phase: `jowa evaluate`, one model on one game, results as JSON."""
