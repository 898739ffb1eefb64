"""The release diff: what changed between two versions of the pipeline's outputs (pages, crawl
health, Q/A pairs and triples, tokens, synth cost, params and stage metrics), read through DVC
at two git revisions and written as Markdown, HTML and JSON."""
