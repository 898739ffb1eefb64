"""eval: the models of every stage measured side by side on held-out pages and knowledge probes."""
