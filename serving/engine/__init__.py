"""The engine's parts: the loop (core.py) over the scheduler (scheduler.py), the runner
(runner.py), the sampler (sampler.py) and the output processor (output.py), and what they
stand on (slots.py, runtime.py, sampling.py, penalties.py, speculate.py, requests.py, limits.py).

Nothing here knows about gRPC or HTTP: the front doors (serving/grpc/, serving/http/) hand
the engine text and sampling parameters through `Server.submit` and read its events back.
`export` imports runtime.py from here (the runtime that serves is the one verified).
"""
