"""How a JOWA model acts: the rolling context, greedy and beam search (`search`), MCTS, and
playing episodes (`play`), with their params sections; below training and evaluation alike."""
