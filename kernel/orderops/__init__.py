"""orderops shared kernel: what every processor, test and admin tool needs.

Nothing here knows about a particular domain: the topic catalog, the Avro contract and codec,
the service factory (Faust app, health, metrics, dead-letter handling), clocks and the CLI.
"""
