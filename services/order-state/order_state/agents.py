"""order-state's agent: the kernel's state-machine agent over this processor's pure domain."""

from __future__ import annotations

from order_state.app import orders, service
from order_state.processor import definition

order_and_payment_machines = service.state_machine_agent(definition(service.settings), orders)
