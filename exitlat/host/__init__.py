"""Facts about the host and the isolation of the measured core."""
