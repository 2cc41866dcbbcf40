"""Measurement of the cost of running a model: device, latency, memory and throughput."""
