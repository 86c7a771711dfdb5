"""Fitting, evaluating, figures and model cards, and the frugal random-forest baseline."""
