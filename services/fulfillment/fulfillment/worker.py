"""fulfillment's agent: the kernel's batch path over this processor's pure domain."""

from __future__ import annotations

from fulfillment.app import orders, service
from fulfillment.processor import definition

lines_and_parcels = service.state_machine_batches(definition(service.settings), orders)
