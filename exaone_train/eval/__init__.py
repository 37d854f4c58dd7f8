"""Evaluation between curriculum stages: NIAH (`niah.py`) and short-context validation loss."""
