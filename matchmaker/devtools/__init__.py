"""Development tools, not used by the scheduler or the workers.

``cluster`` starts a whole system on one machine as real processes (the demo,
the live benchmarks and the integration tests run on it); ``experiment`` is the
demo's science-gateway chain of four tasks.
"""
