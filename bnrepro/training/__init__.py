"""The one training loop (`loop`), and the hooks through which code that wraps it plugs in (`hooks`):
it knows nothing of processes, stores or experiments."""
