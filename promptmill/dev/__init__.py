"""Developer tooling: the local stack and the OpenAI-compatible model simulator."""
