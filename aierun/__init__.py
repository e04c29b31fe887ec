"""aierun: load NPU artifacts, run Llama-family inference, profile it, verify it."""

__version__ = "0.1.0"
# Version of the manifest / artifact / bundle layout this runtime reads.
ARTIFACT_SCHEMA = 1
