"""The session core, dialect-agnostic: sources and their queues, the transcript ledger, repair, finalization."""
