"""HTTP ingest: upstream events as JSON over HTTP, validated and written to their topics (`orderops ingest`)."""
