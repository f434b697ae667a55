"""The pure model: the envelope, state machines as tables, the upstream contract, the topic catalog, clocks."""
