"""
The shared machinery of the indicator-list integrations (C{edl} and
C{export-indicators}): request arguments, the PAN-OS text rules, IP
collapsing, the output formats, building lists into files, caching them,
authentication, on-demand updates and the web resource that serves them.

The two integration modules, L{integrations.edl} and
L{integrations.export_indicators}, only declare their parameters and pick a
L{integrations.lists.settings.Flavour}; everything else lives here.
"""
