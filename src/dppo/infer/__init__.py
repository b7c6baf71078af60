"""Inference: greedy generation (transformers, vLLM), y_gen and the evaluation answers, reward scoring."""
