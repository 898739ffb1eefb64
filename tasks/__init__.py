"""The pipeline's work, one package per stage (crawl, markdown, synth, model, datasets, cpt,
finetune) over a shared core; llm, services and bench hold the endpoint client and local
servers, the demo, and the benchmarks."""
