"""Reporting: the records users and programs see, the CI gate and the output formats.

Owns records.py (Report, Finding, Recommendation and their stable enums), evidence.py (a typed
evidence record per finding kind), parameters.py (a typed parameters record per recommendation id,
which renders its snippet), gate.py (exit codes and fingerprints), pages.py and catalog.py (the
docs pages behind `explain`, SARIF rules and `list`) and render/ (one module per output format).
Pure: no torch. May import the shared vocabulary and the package root only.
"""
