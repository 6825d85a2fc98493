"""Real-kernel checks: python -m tests.vm (see __main__.py)."""
