"""The demo: samples, the seed's story, the report."""
