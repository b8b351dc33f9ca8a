"""The ``socks5`` backend: a network requester relaying TCP streams for clients' SOCKS5 ports."""
