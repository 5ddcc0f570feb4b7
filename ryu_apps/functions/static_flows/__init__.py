"""Static flows: flows a user writes through Ryu's ofctl_rest, kept as intent."""
