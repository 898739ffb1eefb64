"""The synth stage: grounded Q/A pairs and preference triples through an OpenAI-compatible
endpoint."""
