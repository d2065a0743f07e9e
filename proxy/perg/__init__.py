"""Offline PERG benchmark: datasets, answer extraction, metrics, re-scoring, judge calibration, report.

Nothing here talks to a model; the runner feeds it answers and judge verdicts.
"""
