"""The gRPC front door: the TextGeneration servicer (api.py) over the generated stubs (proto.py)."""
