"""Evaluation: pure metrics, evaluators, reports."""
