"""Tools beside the product: the synthetic sample-clip generator used by the demo, tests and benchmarks."""
