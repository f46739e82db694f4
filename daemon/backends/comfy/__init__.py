"""ComfyUI: the protocol read without I/O (``events``), the client, workflows and
preflight, the pool that keeps servers fed, the supervisor of a managed server,
VRAM admission, and the image and video backends built on them (``backend``)."""
