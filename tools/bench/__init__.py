"""`doit bench`: the runtime's host ops against the seed's way, and the emulated
device against Hugging Face transformers, at the default model and Llama-3.2-1B
shapes (python -m tools.bench --parts host,engines)."""
