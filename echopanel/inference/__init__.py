"""Server-wide decode work: decode jobs and the scheduler that runs them on a fixed pool of workers."""
