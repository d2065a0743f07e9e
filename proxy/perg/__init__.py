"""Offline PERG benchmark (`perg-proxy eval`).

Pure parts (no model calls): datasets, cases, extract, metrics, stats, summary, rescore,
calibration, report. The run: options, suite (items and their cases), answering (the proxy's own
pipeline, in process), judging (the monitor's judges), cache, retry, runner, benchmark, results,
progress; cli wires the commands.
"""
