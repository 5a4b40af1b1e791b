"""Flower deployment runtime (flwr 1.41): a ServerApp driving our strategies and a ClientApp running our
trainer, over SuperLink/SuperNodes. Never Flower's simulation engine (it needs Ray)."""
