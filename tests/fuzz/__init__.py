"""API fuzzing with schemathesis: ``python -m tests.fuzz`` (see docs/reliability.md)."""
