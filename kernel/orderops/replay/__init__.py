"""Replay: rebuilding a processor's state and records offline from its topics."""
