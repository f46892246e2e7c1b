"""RL Unplugged's Atari TFRecords: the record framing, the tf.train.Example episodes, a run of shards."""
