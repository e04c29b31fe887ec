"""aierun: load NPU artifacts, run Llama-family inference, profile it, verify it."""

__version__ = "0.1.0"
# Version of the manifest / artifact / bundle layout this runtime reads, and only it.
# 2: the prefill ELFs write the KV cache themselves (their kv_store launch, the `cache`
# role); the runtime cannot run schema 1's, which left it to the host.
ARTIFACT_SCHEMA = 2
OLDER_SCHEMA = "built before the prefill ELFs wrote the KV cache"
