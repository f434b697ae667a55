"""notifier: turns notification requests into messages delivered once — email over SMTP and
signed webhooks — with a delivery ledger, retries, circuit breakers, preferences and coalescing."""
