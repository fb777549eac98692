"""PagerDuty integration: Events API v2 bodies and client, REST lookups, webhooks v3.

Each module is one piece of the protocol and does no retrying or storage of its own:
``events`` builds event bodies, ``client`` sends them and classifies the answer,
``webhooks`` verifies and parses what PagerDuty sends back.
"""
