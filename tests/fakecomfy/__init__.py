"""A fake ComfyUI server that speaks the real wire protocol (see server.py)."""

from .server import FakeComfy, gradient_image, pan_zoom_frames, validate_prompt, write_video

__all__ = ["FakeComfy", "gradient_image", "pan_zoom_frames", "validate_prompt", "write_video"]
