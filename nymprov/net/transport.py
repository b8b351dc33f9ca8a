"""Small adjustments to TCP transports that both ends of the client API make."""

def no_delay(transport):
    """
    Turn off Nagle's algorithm where the transport allows it: answers are
    small and latency-bound, and Nagle plus delayed ACKs would add up to
    40 ms to a request that ends a large answer's last segment.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        set_no_delay(True)
