"""Pure policies that take the clock as input: per-source queues, the degrade ladder, admission, circuit breakers."""
