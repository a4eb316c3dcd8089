"""What every networked command shares: the listener, the service lifecycle, metrics."""
