"""Forwarding to an OpenAI-compatible HTTP server: a lean HTTP/1.1 client (``client``), the forwarding with
its deadlines and retries (``forward``), and whether an upstream's answer can be an OpenAI answer
(``answer_shape``)."""
