"""The routing gateway: an OpenAI-compatible streaming reverse proxy that classifies each prompt."""

from expert_router.gateway.app import Gateway, build_app

__all__ = ["Gateway", "build_app"]
