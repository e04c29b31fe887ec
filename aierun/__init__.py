"""aierun: load NPU artifacts, run Llama-family inference, profile it, verify it."""

__version__ = "0.1.0"
# Version of the manifest / artifact / bundle layout this runtime reads, and only it.
# 2: the prefill ELFs write the KV cache themselves (their kv_store launch, the `cache`
# role); the runtime cannot run schema 1's, which left it to the host.
# 3: each launch of a plan carries its FLOPs and DDR bytes (the roofline reads them),
# and the modeled npu2 time moved from the artifacts into the manifest.
ARTIFACT_SCHEMA = 3
OLDER_SCHEMA = "built by an older aiebuild, whose plans do not carry each launch's work"
