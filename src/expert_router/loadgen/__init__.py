"""The user simulator: a workload of prompts per cluster, N streaming users, one record per request."""
