"""ONNX Runtime: sessions on an honestly chosen provider, and validation of a rewrite against its original."""
