"""Scout Chat: offline, private desktop chat for Llama 4 Scout."""

__version__ = "0.1.0"
