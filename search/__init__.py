"""The search service: study files, search space, objective, workers and the frandi CLI."""
