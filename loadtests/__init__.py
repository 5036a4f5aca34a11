"""Load tests and benchmarks: locust suite, wrk benchmark driver, shared server harness."""
