"""Tools for testing and demonstrating EchoPanel under faults (shipped, so demos can use them too)."""
