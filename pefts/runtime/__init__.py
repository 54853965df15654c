"""Running on a machine: devices and GPU leases, durable file writes, verified
weights, provenance sidecars, artifacts (weights plus their metadata)."""
