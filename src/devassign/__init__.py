"""devassign: direct hardware assignment for clouds."""

__version__ = "0.1.0"
