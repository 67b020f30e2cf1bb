"""Incentives: the node's allocation multiplier and exact shares, its signed statement, and the reward schedule."""
