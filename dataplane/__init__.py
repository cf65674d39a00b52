"""The hive data plane: wire protocol, router, shared memory and the node SDK."""
