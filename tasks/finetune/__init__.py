"""The sft and orpo stages: LlamaFactory runs generated from params."""
