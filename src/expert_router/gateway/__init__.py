"""The routing gateway: an OpenAI-compatible streaming reverse proxy that classifies each prompt."""

from expert_router.gateway.app import build_app
from expert_router.gateway.collector import settle_after_start_up

__all__ = ["build_app", "settle_after_start_up"]
