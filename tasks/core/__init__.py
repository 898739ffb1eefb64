"""What every stage shares: params, boundary records and file formats, atomic io,
hashing, child processes, reports, tokenizers."""
