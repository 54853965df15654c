"""Measurements behind the cost model and the docs: certify throughput against the
raw forward pass, stopping rules, precision, start-up."""
