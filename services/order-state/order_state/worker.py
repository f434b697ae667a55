"""order-state on the batch path: the kernel's state-machine runtime over this processor's pure domain."""

from __future__ import annotations

from order_state.app import orders, service
from order_state.processor import definition

order_and_payment_machines = service.state_machine_batches(definition(service.settings), orders)
