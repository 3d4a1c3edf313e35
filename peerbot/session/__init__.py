"""Sessions: the versioned record of what the agent did in one thread, and where it is stored."""
