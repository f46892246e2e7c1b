"""Dopamine's replay files (DQN-Replay): names, the .npy.gz reader, row placement, episodes, extraction."""
