"""A SOCKS5 port on the client: each local TCP connection one stream to a ``socks5`` provider."""
