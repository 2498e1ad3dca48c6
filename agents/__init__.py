"""Agents: the model lanes layer and the workers that drive it."""
