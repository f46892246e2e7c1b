"""What the workflow's jobs need around the stages: code inputs, the DVC ledger hook, GPU slots
and the GPU check, the released-checkpoint section."""
