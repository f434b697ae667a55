"""fulfillment's agent: the kernel's state-machine agent over this processor's pure domain."""

from __future__ import annotations

from fulfillment.app import orders, service
from fulfillment.processor import definition

lines_and_parcels = service.state_machine_agent(definition(service.settings), orders)
