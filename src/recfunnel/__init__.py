"""recfunnel: a two-stage recommender research codebase."""
