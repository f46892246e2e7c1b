"""The data phase: runs (downloaded, generated) to per-game training stores, and their loading.

The stages here read a run through the one `Run` interface (`runs`); the source formats lie beneath
them: `dopamine` (DQN-Replay's replay files) and `rlu` (RL Unplugged's TFRecords), each yielding the
episodes, arrays and errors of `episodes`, so that neither imports the other."""
