"""The data phase: DQN-Replay checkpoints (downloaded or generated) to per-game training stores."""
