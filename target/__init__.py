"""The simulated convadd accelerator: hardware, target tags, ISA, lowering, simulator."""
