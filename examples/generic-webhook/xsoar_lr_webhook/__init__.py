"""
XSOAR's Generic Webhook as an xsoar-lr integration, written the way a third
party writes one: with nothing from xsoar-lr but C{xsoar_lr.api} (and
C{xsoar_lr.testing} in its tests).

 - L{xsoar_lr_webhook.integration}: the parameters and the factories the
   host calls;
 - L{xsoar_lr_webhook.auth}: basic auth and header tokens;
 - L{xsoar_lr_webhook.events}: the events, parsed and kept in SQLite;
 - L{xsoar_lr_webhook.resource}: the HTTP side.
"""
