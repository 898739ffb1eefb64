"""The work of each pipeline stage, as small typed functions the flows call."""
