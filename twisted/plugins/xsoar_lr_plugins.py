"""
Registers C{twistd xsoar-lr} and the integrations that ship with xsoar-lr.

Everything here is lazy: the modules named below are imported only when
used, so scanning plugins never imports the reactor or an integration.
"""

from twisted.application.service import ServiceMaker

from xsoar_lr.api import Integration

xsoar_lr = ServiceMaker(
    "xsoar-lr",
    "xsoar_lr.service",
    "Host long-running XSOAR-style integrations behind a TLS gateway.",
    "xsoar-lr",
)

edl = Integration(
    id="edl",
    module="integrations.edl",
    display_name="Generic Export Indicators Service (PAN-OS EDL)",
    description="Serves indicators from the store as an external dynamic list.",
)

export_indicators = Integration(
    id="export-indicators",
    module="integrations.export_indicators",
    display_name="Export Indicators Service",
    description="Serves indicators in MineMeld-compatible and XSOAR formats.",
)

teams = Integration(
    id="teams",
    module="integrations.teams",
    display_name="Microsoft Teams",
    description="A Bot Framework messaging endpoint for Microsoft Teams.",
)

echo = Integration(
    id="echo",
    module="integrations.echo",
    display_name="Echo (diagnostics)",
    description="Answers every request with what the instance received, as JSON.",
)
