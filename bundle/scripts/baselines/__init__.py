"""Baselines that need no training, run through the same protocol as the network: they bound
what a few-shot method must beat (copying the support mask, registering the support slice)."""
