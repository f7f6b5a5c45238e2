"""
The subcommands of the C{xsoar-lr} command line, one module per group.
"""
