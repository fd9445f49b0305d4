"""Training: state, the SFT and DPO steps, losses, optimizer, the run loop and the run layer."""
