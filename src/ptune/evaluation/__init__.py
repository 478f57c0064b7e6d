"""Evaluation: metrics, scoring a model on a table, cross-validation, baselines and the recipe search."""
