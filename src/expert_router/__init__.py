"""Expert Router: serve several specialised LLMs behind one endpoint and measure it under load."""

__version__ = "0.1.0"
