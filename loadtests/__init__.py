"""Load tests and benchmarks: locust suite, wrk benchmark driver with the Ray Serve peer and CPU
accounting, py-spy profile, shared server harness."""
