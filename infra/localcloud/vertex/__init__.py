"""The Vertex AI emulator: a REST v1 API server over pluggable job and model runtimes."""
