"""ComfyUI: the protocol, read without I/O (``events``). The client, workflows and backends follow."""
