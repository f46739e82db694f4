"""Google's models as backends: Gemini image candidates and Veo image-to-video clips.

How this works (same shape as ``comfy/``):

- ``client``: the route adapter. One ``genai.Client`` per backend, on the route
  ``[google] route`` names: the Gemini API with a key, or Vertex AI with a
  project and credentials (or an express-mode key). It turns SDK errors into
  ours (a reason and a fix, the key never in either) and retries a 429 after
  the ``RetryInfo.retryDelay`` Google asks for, which the SDK ignores.
- ``costs``: the price table, estimates, the caps and the spend ledger (per
  run ``cost.json``, per day under the state root). A job is entered in the
  ledger as *pending* before it is sent, so the caps count money in flight.
- ``images``: the ``gemini`` image backend (``generate_content`` with image
  output and the reference images inline).
- ``operations``: Veo's long-running operations: the poll schedule, the
  concurrency limit per project, reading a finished operation.
- ``veo``: the ``veo`` video backend. The operation name is returned from
  ``submit`` and written into ``run.json`` at once; after a restart the job is
  re-attached by that name and never submitted again.
- ``doctor``: what ``tandava doctor`` checks.

google-genai 3.x refuses ``generate_videos`` in Gemini API (key) mode before
sending anything, so Veo runs on the Vertex route; images run on either.
"""
