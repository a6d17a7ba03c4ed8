"""Megatron-core glue: architectures read from Hugging Face configs, HF <-> megatron weight mapping,
model construction, forward/backward, optimizer and the CPU compatibility layer."""
