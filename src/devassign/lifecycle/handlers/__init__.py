"""The built-in lifecycle handlers, one module per kind of device (see docs/lifecycle.md)."""
