"""Pure, synchronous logic: no sockets, no threads, no clocks (time is passed in)."""
