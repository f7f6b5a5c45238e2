"""
Registers the Generic Webhook integration with xsoar-lr.

The file name is unique to this package, because every package's plugins
share the one C{twisted/plugins} folder once installed. Nothing is imported
here but the registration: the integration's code loads only when an
instance of it is configured or started.
"""

from xsoar_lr.api import Integration

generic_webhook = Integration(
    id="generic-webhook",
    module="xsoar_lr_webhook.integration",
    display_name="Generic Webhook",
    description="Receives JSON events over HTTP, with basic auth or a header "
    "token, and keeps them in the instance's state folder.",
)
