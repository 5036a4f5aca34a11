"""Load tests and benchmarks: locust suite, wrk benchmark driver with the Ray Serve peer and CPU
accounting, py-spy profile (the server harness they share with the tests is tests/harness.py)."""
