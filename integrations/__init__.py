"""
The integrations that ship with xsoar-lr. Each module (or package) here is
registered in C{twisted/plugins/xsoar_lr_plugins.py}.
"""
