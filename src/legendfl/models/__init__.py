"""Model families: finding a transformer's blocks and head in any supported model (``backbone``), canonical tensor
keys (``keys``), tokenised inputs (``tokenized``), generative data and evaluation (``generative``), GGUF files
dequantised once (``gguf_cache``)."""
