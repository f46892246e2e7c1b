"""The training phase: tokenizer training, tokenization, pretraining and fine-tuning, resumable."""
