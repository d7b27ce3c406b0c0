"""The inference side: the batcher, the BLIP engine, image decoding, URL fetching, offline captioning.

Everything that imports torch or transformers lives here; it never imports fastapi or the gateway.
"""
