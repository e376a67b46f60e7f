"""The routing gateway: an OpenAI-compatible streaming reverse proxy that classifies each prompt."""

from expert_router.gateway.app import build_app

__all__ = ["build_app"]
