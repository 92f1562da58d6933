"""The tinker-std conformance suite: a pytest plugin plus test modules run against any backend.

    pytest --pyargs tinker_std.conformance --tinker-backend mock --tinker-report report.json
    python -m tinker_std.conformance --backend mock

See ``plugin`` for options, markers and fixtures, ``tolerances`` for the spec's tolerance classes,
``strategies`` for the public Hypothesis strategies and ``report`` for the per-statement report.
Importing this package is cheap (no torch, no backend).
"""
