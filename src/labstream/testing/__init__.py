"""Local stand-ins for the remote services labstream streams to, for tests, demos and the CLI."""
