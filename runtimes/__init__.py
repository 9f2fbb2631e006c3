"""The `.sbc` artifact and the runtimes that load and run compiled models."""
