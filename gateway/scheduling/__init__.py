"""Which models are loaded: the scheduler (loads, evictions, idle unloads), each model's lifecycle, pure
placement per device, the dry-run explanation of a load, pins, and the registry of names and aliases."""
