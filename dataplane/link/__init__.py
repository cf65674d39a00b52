"""Links between routers: certificates now; the protocol follows (see the README's Links section)."""
