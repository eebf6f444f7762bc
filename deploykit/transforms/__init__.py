"""Graph transforms that converters may use (plug-in API): ONNX preparation and rewrites, int8 repair."""
