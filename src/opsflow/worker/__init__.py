"""The worker process: the only place Temporal clients, pools and adapters are built."""
