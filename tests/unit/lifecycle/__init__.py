"""Lifecycle handlers and libvirt XML tests."""
