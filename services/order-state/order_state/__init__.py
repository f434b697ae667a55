"""order-state: owns the order lifecycle and the payment of each instrument, as two separate
state machines (never one status field for several domains)."""
