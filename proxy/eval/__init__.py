"""The offline PERG benchmark (`perg-proxy eval`): options, suite (items and their cases),
answering (the proxy's own pipeline, in process), judging (the PERG judges), cache, retry,
runner, benchmark, results, summary, report, rescore, calibration, progress; `cli` wires the
commands."""
