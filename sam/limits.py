"""Every limit the app sets on what visitors send, in one place.

README, "Limits and failure modes", says what a visitor sees when one is reached. The cache and session
sizes can be changed through the environment variables named beside them (read by sam.service and app.py).
"""

MAX_UPLOAD_MB = 50  # Gradio's max_file_size: larger uploads are refused before they are stored
MAX_PIXELS = 40_000_000  # width x height, read from the file header before anything is decoded
MAX_ASPECT = 32  # long side / short side: SAM sees the long side at 1024 px, so the short side keeps >= 32 px
MAX_PROMPTS = 64  # points and boxes per object (the page), points per request (the /segment API)
MAX_OBJECTS = 64  # objects per image
MAX_NAME = 40  # characters of an object name

SESSION_TTL_S = 3600  # a visitor's state is dropped this long after their last request
MAX_SESSIONS = 500  # SAM_MAX_SESSIONS: the oldest sessions are evicted beyond this many
QUEUE_SIZE = 64  # queued image embeddings and API calls; more get "the queue is full"
PAGE_TIMEOUT_S = 120  # the page stops waiting for an answer after this long (static/canvas.js, TIMEOUT_MS)

EMBEDDING_CACHE_MB = 512  # SAM_EMBEDDING_CACHE_MB: image embeddings shared by all visitors (LRU)
EMBEDDING_CACHE_ITEMS = 64  # SAM_EMBEDDING_CACHE_ITEMS
IMAGE_CACHE_MB = 512  # SAM_IMAGE_CACHE_MB: decoded images kept for re-embedding and exports (LRU)
MAX_MODELS = 2  # SAM_MAX_MODELS: models loaded at once (least recently used is dropped)
