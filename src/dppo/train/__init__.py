"""Training: the loop, the losses, response log-probs and the chunked LM head, SFT and preference tasks, the reference cache."""
