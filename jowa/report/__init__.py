"""The report phase: the paper's tables and figures from the evaluation results."""
