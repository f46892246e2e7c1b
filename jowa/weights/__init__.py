"""Weight files: our JOWA and tokenizer checkpoints, state-file reading, the reference import."""
