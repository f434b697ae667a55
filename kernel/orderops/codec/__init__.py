"""The codec: Avro schemas and single-object encoding, schema resolution rules, what a reader masks and checks."""
