"""returns: policy-versioned return authorization, inspection, and refunds routed by payment
channel — the return machine and the refund machine, with every decision's rule trace."""
