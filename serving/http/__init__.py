"""The HTTP front door: OpenAI-compatible routes (app.py), the gate every request passes
(gate.py), the completions and chat shapes, and the playground page."""
