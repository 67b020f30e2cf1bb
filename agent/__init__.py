"""aitn-agent: the normal world (and, later, the node role)."""

__version__ = "0.1.0"
