"""The web app's server side: the only part of `sam` that imports gradio or starlette.

`app.py` (the Space's entry point) lays out the page and wires these parts together:
`settings` (every SAM_* variable, read once), `service` (models and caches shared by all visitors),
`session` (one visitor's prompts and objects), `canvas` (the page's requests), `body_limit`
(request-size middleware), `lru` and `threads` (the caches' and the cores' bookkeeping).
"""
