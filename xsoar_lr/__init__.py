"""
xsoar-lr: a host for long-running HTTP integrations in the style of Cortex
XSOAR, with a TLS gateway that publishes instances at
C{/instance/execute/<instance name>}.
"""

__version__ = "0.1.0"
