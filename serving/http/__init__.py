"""The HTTP front door: OpenAI-compatible routes (app.py), the gate every request passes
(gate.py), the completions, chat, responses (with responses_input.py) and embeddings shapes, and the playground page."""
