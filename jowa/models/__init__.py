"""Neural network modules of the JOWA reproduction: tokenizer, world-action model and heads."""
