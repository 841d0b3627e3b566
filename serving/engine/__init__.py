"""The engine's parts: the continuous-batching loop (core.py) and what it drives.

Nothing here knows about gRPC or HTTP: the front doors (serving/grpc/, serving/http/) hand
the engine text and sampling parameters through `Server.submit` and read its events back.
`export` imports runtime.py from here (the runtime that serves is the one verified).
"""
