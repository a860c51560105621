"""Adapters: the ports implemented with the official Google Cloud clients."""
