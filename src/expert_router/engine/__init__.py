"""The embedded expert backend: tiny expert LMs built offline, served by vLLM's CPU build."""
